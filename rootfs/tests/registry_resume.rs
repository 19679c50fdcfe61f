//! Interrupted transfers resume instead of starting over.
//!
//! A fault-injecting TCP proxy on loopback sits between the client and a
//! real `docker-registry`. It understands just enough HTTP/1.1 (request
//! heads and `Content-Length` bodies) to cut one connection once: after N
//! bytes of the response to a blob download, or after N bytes of upload
//! (`PATCH`) bodies. Later connections pass through. It counts the bytes it
//! forwarded, so a test can tell a resumed transfer (about 1x the blob)
//! from one that started over (1x plus what was sent before the cut).

mod registry_support;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use registry_support::*;
use seaport_rootfs::reference::ImageRef;
use seaport_rootfs::registry::{
    pull_image, push_image, ClientOptions, CopyError, RegistryClient, RegistryError,
};
use seaport_rootfs::store::Store;
use seaport_shared::digest::Digest;

const MIB: usize = 1024 * 1024;

/// What the proxy breaks.
#[derive(Clone, Debug)]
enum Fault {
    /// Cut the connection once, `after` bytes into the response to a `GET`
    /// whose path contains `path` (head included). With `corrupt_after_cut`,
    /// every later response to such a request has its first body byte
    /// flipped: the registry serves wrong content after the resume point.
    CutDownload {
        path: String,
        after: u64,
        corrupt_after_cut: bool,
    },
    /// Cut the connection once, when a `PATCH` body byte beyond the first
    /// `after` (counted over all `PATCH` bodies) arrives; the bytes up to
    /// `after` go through. With `after` at a chunk boundary, the registry
    /// gets the next chunk's request head and no byte of its body.
    CutUpload { after: u64 },
}

#[derive(Default)]
struct Counters {
    /// Whether the one cut happened.
    cut: AtomicBool,
    /// Bytes forwarded client to registry (heads and bodies).
    up: AtomicU64,
    /// Bytes forwarded registry to client.
    down: AtomicU64,
    /// Bytes forwarded in responses to requests for the download target.
    target_down: AtomicU64,
    /// Bytes of `PATCH` bodies forwarded.
    patch_body: AtomicU64,
    /// Request lines seen, in order, for failure messages.
    requests: Mutex<Vec<String>>,
    connections: AtomicUsize,
}

/// Per-connection state shared by its two pumps.
#[derive(Default)]
struct ConnState {
    /// The request in flight is for the download target.
    target: AtomicBool,
    /// A new request went up: the next response starts.
    new_request: AtomicBool,
}

struct FaultProxy {
    addr: String,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<thread::JoinHandle<()>>,
}

impl FaultProxy {
    fn start(upstream: &str, fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let accept = {
            let (counters, stop, streams) = (counters.clone(), stop.clone(), streams.clone());
            let upstream = upstream.to_string();
            thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    counters.connections.fetch_add(1, Ordering::SeqCst);
                    {
                        let mut s = streams.lock().unwrap();
                        s.push(client.try_clone().unwrap());
                        s.push(server.try_clone().unwrap());
                    }
                    let conn = Arc::new(ConnState::default());
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let (k, f, st) = (counters.clone(), fault.clone(), conn.clone());
                    thread::spawn(move || pump_up(client, server, &f, &k, &st));
                    let (k, f) = (counters.clone(), fault.clone());
                    thread::spawn(move || pump_down(s2, c2, &f, &k, &conn));
                }
            })
        };
        Self {
            addr,
            counters,
            stop,
            streams,
            accept: Some(accept),
        }
    }

    fn cut(&self) -> bool {
        self.counters.cut.load(Ordering::SeqCst)
    }

    fn requests(&self) -> String {
        self.counters.requests.lock().unwrap().join("\n")
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr); // wakes the accept loop
        for s in self.streams.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn cut_both(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

/// Client to registry: parses request heads to know which request is in
/// flight and where bodies are; cuts uploads.
fn pump_up(
    mut client: TcpStream,
    mut server: TcpStream,
    fault: &Fault,
    k: &Counters,
    conn: &ConnState,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut head: Vec<u8> = Vec::new();
    let mut body_left: u64 = 0;
    let mut in_patch = false;
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = server.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        let mut i = 0;
        let mut forward = n;
        let mut cut_now = false;
        while i < n {
            if body_left > 0 {
                let take = body_left.min((n - i) as u64);
                if in_patch {
                    let before = k.patch_body.load(Ordering::SeqCst);
                    if let Fault::CutUpload { after } = fault {
                        if before <= *after
                            && before + take > *after
                            && k.cut
                                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                                .is_ok()
                        {
                            let sent = *after - before;
                            k.patch_body.fetch_add(sent, Ordering::SeqCst);
                            forward = i + sent as usize;
                            cut_now = true;
                            break;
                        }
                    }
                    k.patch_body.fetch_add(take, Ordering::SeqCst);
                }
                body_left -= take;
                i += take as usize;
            } else {
                head.push(buf[i]);
                i += 1;
                if head.ends_with(b"\r\n\r\n") {
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let line = text.lines().next().unwrap_or_default().to_string();
                    body_left = text
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.trim().parse().ok())
                        .unwrap_or(0);
                    assert!(
                        !text
                            .to_ascii_lowercase()
                            .contains("transfer-encoding: chunked"),
                        "the proxy does not follow chunked request bodies: {line}"
                    );
                    in_patch = line.starts_with("PATCH ");
                    let is_target = match fault {
                        Fault::CutDownload { path, .. } => {
                            line.starts_with("GET ") && line.contains(path.as_str())
                        }
                        Fault::CutUpload { .. } => false,
                    };
                    conn.target.store(is_target, Ordering::SeqCst);
                    conn.new_request.store(true, Ordering::SeqCst);
                    let range = text
                        .lines()
                        .find(|l| l.to_ascii_lowercase().starts_with("range:"))
                        .map(|l| format!(" [{l}]"))
                        .unwrap_or_default();
                    k.requests.lock().unwrap().push(format!("{line}{range}"));
                    head.clear();
                }
            }
        }
        k.up.fetch_add(forward as u64, Ordering::SeqCst);
        if server.write_all(&buf[..forward]).is_err() {
            cut_both(&client, &server);
            return;
        }
        if cut_now {
            cut_both(&client, &server);
            return;
        }
    }
}

/// Registry to client: counts, cuts and corrupts responses to the target.
fn pump_down(
    mut server: TcpStream,
    mut client: TcpStream,
    fault: &Fault,
    k: &Counters,
    conn: &ConnState,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut response_bytes: u64 = 0;
    let mut head_tail: Vec<u8> = Vec::new();
    let mut in_body = false;
    let mut corrupted = false;
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = client.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        if conn.new_request.swap(false, Ordering::SeqCst) {
            response_bytes = 0;
            head_tail.clear();
            in_body = false;
            corrupted = false;
        }
        let mut forward = n;
        let mut cut_now = false;
        if conn.target.load(Ordering::SeqCst) {
            if let Fault::CutDownload {
                after,
                corrupt_after_cut,
                ..
            } = fault
            {
                if *corrupt_after_cut && k.cut.load(Ordering::SeqCst) && !corrupted {
                    for byte in &mut buf[..n] {
                        if in_body {
                            *byte ^= 0xff;
                            corrupted = true;
                            break;
                        }
                        head_tail.push(*byte);
                        in_body = head_tail.ends_with(b"\r\n\r\n");
                    }
                }
                if response_bytes < *after
                    && response_bytes + n as u64 >= *after
                    && k.cut
                        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    forward = (*after - response_bytes) as usize;
                    cut_now = true;
                }
            }
            response_bytes += forward as u64;
            k.target_down.fetch_add(forward as u64, Ordering::SeqCst);
        }
        k.down.fetch_add(forward as u64, Ordering::SeqCst);
        if client.write_all(&buf[..forward]).is_err() {
            cut_both(&client, &server);
            return;
        }
        if cut_now {
            cut_both(&client, &server);
            return;
        }
    }
}

fn plain_options() -> ClientOptions {
    ClientOptions {
        insecure: true,
        progress: false,
        retries: 3,
        ..ClientOptions::default()
    }
}

/// Re-hashes every blob of the image named `name` in `store`.
fn assert_image_verifies(store: &Store, name: &str) {
    let image = store.resolve(name).unwrap();
    let manifest = fs::read(store.blob_path(&image.manifest_digest)).unwrap();
    assert_eq!(Digest::of(&manifest), image.manifest_digest);
    for desc in std::iter::once(&image.manifest.config).chain(&image.manifest.layers) {
        let bytes = fs::read(store.blob_path(&desc.digest)).unwrap();
        assert_eq!(bytes.len() as u64, desc.size, "size of {}", desc.digest);
        assert_eq!(
            Digest::of(&bytes),
            desc.digest,
            "content of {}",
            desc.digest
        );
    }
}

/// Pushes a one-layer image straight to `reg`; returns the layer.
fn seed_registry(reg: &TestRegistry, repo: &str, layer_size: usize) -> (Vec<u8>, Digest) {
    let name = format!("{}/{repo}", reg.addr);
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let layer = noise(11, layer_size);
    let digest = make_store_image(&store, &name, std::slice::from_ref(&layer));
    let client = RegistryClient::new(&reg.addr, &plain_options(), None).unwrap();
    push_image(&store, &name, &ImageRef::parse(&name).unwrap(), &client).unwrap();
    (layer, digest)
}

#[test]
fn a_download_cut_at_sixty_percent_resumes_instead_of_starting_over() {
    let storage = tempfile::tempdir().unwrap();
    let reg = TestRegistry::plain(storage.path());
    let size = 8 * MIB + 321;
    let (layer, manifest_digest) = seed_registry(&reg, "clusters/resume:v1", size);
    let layer_digest = Digest::of(&layer);
    let proxy = FaultProxy::start(
        &reg.addr,
        Fault::CutDownload {
            path: format!("/blobs/{layer_digest}"),
            after: (size as u64) * 6 / 10,
            corrupt_after_cut: false,
        },
    );

    let name = format!("{}/clusters/resume:v1", proxy.addr);
    let client = RegistryClient::new(&proxy.addr, &plain_options(), None).unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let report = pull_image(&store, &ImageRef::parse(&name).unwrap(), &client, None).unwrap();

    assert!(
        proxy.cut(),
        "the proxy never cut the download:\n{}",
        proxy.requests()
    );
    assert_eq!(report.digest, Some(manifest_digest));
    assert_image_verifies(&store, &name);
    assert_eq!(fs::read(store.blob_path(&layer_digest)).unwrap(), layer);
    let forwarded = proxy.counters.target_down.load(Ordering::SeqCst);
    let ratio = forwarded as f64 / size as f64;
    eprintln!("pull: blob {size} bytes, forwarded {forwarded} bytes for it ({ratio:.3}x)");
    assert!(
        ratio < 1.5,
        "the download started over: {forwarded} bytes forwarded for a {size}-byte blob ({ratio:.2}x); requests:\n{}",
        proxy.requests()
    );
}

#[test]
fn content_changed_after_the_resume_point_fails_verification() {
    let storage = tempfile::tempdir().unwrap();
    let reg = TestRegistry::plain(storage.path());
    let size = 4 * MIB + 5;
    let (layer, _) = seed_registry(&reg, "clusters/swapped:v1", size);
    let layer_digest = Digest::of(&layer);
    let proxy = FaultProxy::start(
        &reg.addr,
        Fault::CutDownload {
            path: format!("/blobs/{layer_digest}"),
            after: (size as u64) * 6 / 10,
            corrupt_after_cut: true,
        },
    );

    let name = format!("{}/clusters/swapped:v1", proxy.addr);
    let client = RegistryClient::new(&proxy.addr, &plain_options(), None).unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let err = pull_image(&store, &ImageRef::parse(&name).unwrap(), &client, None).unwrap_err();

    assert!(
        proxy.cut(),
        "the proxy never cut the download:\n{}",
        proxy.requests()
    );
    assert!(
        matches!(
            err,
            CopyError::Registry(RegistryError::DigestMismatch { .. })
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&layer_digest.to_string()), "{text}");
    assert!(text.contains("failed verification"), "{text}");
    assert!(store.resolve(&name).is_err(), "a bad image was named");
    assert!(!store.has_blob(&layer_digest), "a bad blob was kept");
}

/// Pushes a one-layer image of `size` bytes through a proxy that cuts the
/// upload after `cut_at` bytes of `PATCH` bodies, in `chunk`-byte chunks;
/// checks the registry then serves the image. Returns the bytes the proxy
/// forwarded to the registry and the requests it saw.
fn push_through_a_cut(size: usize, chunk: u64, cut_at: u64) -> (u64, String) {
    let storage = tempfile::tempdir().unwrap();
    let reg = TestRegistry::plain(storage.path());
    let proxy = FaultProxy::start(&reg.addr, Fault::CutUpload { after: cut_at });
    let name = format!("{}/team/big:v1", proxy.addr);
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let layer = noise(12, size);
    let digest = make_store_image(&store, &name, std::slice::from_ref(&layer));
    let opts = ClientOptions {
        chunk_size: chunk,
        ..plain_options()
    };
    let client = RegistryClient::new(&proxy.addr, &opts, None).unwrap();
    let report = push_image(&store, &name, &ImageRef::parse(&name).unwrap(), &client)
        .unwrap_or_else(|e| panic!("{e}\nrequests:\n{}", proxy.requests()));

    assert!(
        proxy.cut(),
        "the proxy never cut the upload:\n{}",
        proxy.requests()
    );
    assert_eq!(report.digest, Some(digest));

    // The registry has the image, asked directly.
    let direct = format!("{}/team/big:v1", reg.addr);
    let inspect = run_ok(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{direct}"),
    ]));
    assert!(inspect.contains(&digest.to_string()), "{inspect}");
    let dst_root = tempfile::tempdir().unwrap();
    let dst = Store::open(dst_root.path()).unwrap();
    let client = RegistryClient::new(&reg.addr, &plain_options(), None).unwrap();
    pull_image(&dst, &ImageRef::parse(&direct).unwrap(), &client, None).unwrap();
    assert_image_verifies(&dst, &direct);
    assert_eq!(fs::read(dst.blob_path(&Digest::of(&layer))).unwrap(), layer);

    let uploaded = proxy.counters.up.load(Ordering::SeqCst);
    eprintln!(
        "push: blob {size} bytes in {chunk}-byte chunks, cut after {cut_at}: {uploaded} bytes uploaded ({:.3}x)",
        uploaded as f64 / size as f64
    );
    (uploaded, proxy.requests())
}

#[test]
fn an_upload_cut_between_chunks_resumes_instead_of_starting_over() {
    // Five 1 MiB chunks and a bit; the connection drops as the fourth
    // chunk starts, 60% in: starting over would send 1.6x the blob.
    let size = 5 * MIB + 123;
    let chunk = MIB as u64;
    let (uploaded, requests) = push_through_a_cut(size, chunk, 3 * chunk);
    let ratio = uploaded as f64 / size as f64;
    assert!(
        ratio < 1.5,
        "the upload started over: {uploaded} bytes sent for a {size}-byte blob ({ratio:.2}x); requests:\n{requests}"
    );
}

#[test]
fn an_upload_cut_inside_a_chunk_still_completes() {
    // Cut in the middle of the second of three 2 MiB chunks. distribution
    // 2.8 keeps the partial chunk, then refuses the upload's previous
    // state and drops the upload, so the blob is sent again from a new
    // upload: at most twice the blob, never a failed push.
    let size = 5 * MIB + 123;
    let (uploaded, requests) = push_through_a_cut(size, 2 * MIB as u64, (size as u64) * 6 / 10);
    let ratio = uploaded as f64 / size as f64;
    assert!(
        ratio < 2.0,
        "more than one restart: {uploaded} bytes sent for a {size}-byte blob ({ratio:.2}x); requests:\n{requests}"
    );
}
