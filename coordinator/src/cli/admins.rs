//! `seaport admin list | issue NAME | revoke CERT`: the admin certificates
//! the coordinator issued.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::ca::{self, Ca, CoordinatorPaths};
use crate::state::AdminRecord;
use crate::tokens;
use seaport_shared::confined;
use seaport_shared::pki::{self, CertInfo};
use seaport_shared::wire::{AdminCertInfo, AdminRequest, AdminResponse};

use super::access::{with_coordinator, Offline};
use seaport_shared::clock::rfc3339;

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
    /// Coordinator address (HOST:PORT, or several: HOST:PORT,HOST:PORT);
    /// defaults to the address `coordinator serve` listens on.
    #[arg(long, global = true)]
    pub coordinator: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Every admin certificate issued: serial, name, expiry, state.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Issue an admin certificate for another operator or machine. Its key
    /// is made here and written with the certificate and the CA under
    /// OUT/coordinator/; use it as `seaport --root OUT COMMAND ...
    /// --coordinator HOST:PORT`.
    Issue {
        /// Its name (who holds it), e.g. alice or ci@build-1.
        name: String,
        /// How long it is valid (at most 365d).
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Directory to write coordinator/{admin.key,admin.pem,ca.pem} under.
        #[arg(long, short = 'o')]
        out: std::path::PathBuf,
    },
    /// Revoke an admin certificate (by serial, or a name only one valid
    /// certificate carries): refused on its next request and connection,
    /// and its open connections are closed.
    Revoke {
        /// Serial or name.
        cert: String,
    },
}

#[derive(Debug, Serialize)]
struct AdminView {
    serial: u64,
    name: String,
    issued_at: String,
    expires_at: String,
    /// `valid`, `expired` or `revoked`.
    state: &'static str,
    revoked_at: Option<String>,
    /// The coordinator's own (ROOT/coordinator/admin.pem).
    local: bool,
    /// The one this command used.
    current: bool,
}

fn state_of(c: &AdminCertInfo, now: i64) -> &'static str {
    if c.revoked_at.is_some() {
        "revoked"
    } else if c.expires_at <= now {
        "expired"
    } else {
        "valid"
    }
}

/// The serial of the admin certificate under `root`, if any.
fn own_serial(root: &Path) -> Option<u64> {
    let pem = pki::read_text(&CoordinatorPaths::new(root).admin_cert()).ok()?;
    let certs = pki::certs_from_pem(&pem, "").ok()?;
    CertInfo::from_der(&certs[0]).ok().map(|i| i.serial)
}

pub(super) fn run(root: &Path, args: AdminArgs) -> anyhow::Result<()> {
    let explicit = args.coordinator.as_deref();
    match args.command {
        AdminCommand::List { json } => list(root, json, explicit),
        AdminCommand::Issue { name, ttl, out } => issue(root, &name, ttl, &out, explicit),
        AdminCommand::Revoke { cert } => revoke(root, &cert, explicit),
    }
}

fn list(root: &Path, json: bool, explicit: Option<&str>) -> anyhow::Result<()> {
    let mut certs = with_coordinator(
        root,
        explicit,
        AdminRequest::ListAdmins,
        Offline::Read,
        |resp| match resp {
            AdminResponse::Admins(list) => Ok(list),
            other => anyhow::bail!("unexpected answer from the coordinator: {other:?}; the CLI and the coordinator must be the same version (seaport --version)"),
        },
        |store| Ok(store.admins()?.iter().map(AdminRecord::info).collect()),
    )
    .context("listing admin certificates")?;
    certs.sort_by_key(|c| c.serial);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let own = own_serial(root);
    let views: Vec<AdminView> = certs
        .iter()
        .map(|c| AdminView {
            serial: c.serial,
            name: c.name.clone(),
            issued_at: rfc3339(c.issued_at),
            expires_at: rfc3339(c.expires_at),
            state: state_of(c, now),
            revoked_at: c.revoked_at.map(rfc3339),
            local: c.local,
            current: own == Some(c.serial),
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    println!(
        "{:<8}  {:<20}  {:<8}  {:<20}  NOTE",
        "SERIAL", "NAME", "STATE", "EXPIRES"
    );
    for v in &views {
        let mut note = Vec::new();
        if v.local {
            note.push("local");
        }
        if v.current {
            note.push("in use here");
        }
        println!(
            "{:<8}  {:<20}  {:<8}  {:<20}  {}",
            v.serial,
            v.name,
            v.state,
            v.expires_at,
            note.join(", ")
        );
    }
    Ok(())
}

fn issue(
    root: &Path,
    name: &str,
    ttl: Duration,
    out: &Path,
    explicit: Option<&str>,
) -> anyhow::Result<()> {
    if !ca::valid_admin_name(name) {
        anyhow::bail!(
            "admin certificate name {name:?}: use 1 to 64 letters, digits, '.', '_', '@' or '-'"
        );
    }
    let dest = CoordinatorPaths::new(out);
    for f in [dest.admin_cert(), dest.admin_key()] {
        if f.exists() {
            anyhow::bail!(
                "{} exists: choose another --out directory (an admin identity is never overwritten)",
                f.display()
            );
        }
    }
    let key = pki::generate_key()?;
    let csr_der = pki::node_csr(&key, name, &[])?;
    let ttl_secs = ttl.as_secs();
    let (info, cert_pem, ca_pem) = with_coordinator(
        root,
        explicit,
        AdminRequest::IssueAdmin {
            name: name.to_string(),
            csr_der: csr_der.clone(),
            ttl_secs,
        },
        Offline::Write,
        |resp| match resp {
            AdminResponse::AdminIssued {
                info,
                cert_pem,
                ca_pem,
            } => Ok((info, cert_pem, ca_pem)),
            other => anyhow::bail!("unexpected answer from the coordinator: {other:?}; the CLI and the coordinator must be the same version (seaport --version)"),
        },
        |store| {
            let ca = Ca::load(root)?;
            let (info, pem) = tokens::issue_admin(store, &ca, name, &csr_der, ttl_secs)?;
            Ok((info, pem, ca.cert_pem().to_string()))
        },
    )
    .with_context(|| format!("issuing admin certificate {name}"))?;
    pki::create_private_dir(&dest.dir)?;
    confined::write_atomic(&dest.ca_cert(), ca_pem.as_bytes(), 0o644)?;
    confined::write_atomic(&dest.admin_key(), key.serialize_pem().as_bytes(), 0o600)?;
    confined::write_atomic(&dest.admin_cert(), cert_pem.as_bytes(), 0o600)?;
    println!(
        "issued admin certificate serial {} ({}) valid until {}",
        info.serial,
        info.name,
        rfc3339(info.expires_at)
    );
    println!("written to {}", dest.dir.display());
    println!(
        "use it with: seaport --root {} nodes --coordinator HOST:PORT",
        out.display()
    );
    Ok(())
}

fn revoke(root: &Path, cert: &str, explicit: Option<&str>) -> anyhow::Result<()> {
    let info = with_coordinator(
        root,
        explicit,
        AdminRequest::RevokeAdmin {
            cert: cert.to_string(),
        },
        Offline::Write,
        |resp| match resp {
            AdminResponse::AdminRevoked(info) => Ok(info),
            other => anyhow::bail!("unexpected answer from the coordinator: {other:?}; the CLI and the coordinator must be the same version (seaport --version)"),
        },
        |store| {
            let rec = store.resolve_admin(cert)?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let rec = store.revoke_admin(rec.serial, now)?;
            if rec.local {
                let ca = Ca::load(root)?;
                ca::ensure_local_admin(root, store, &ca)?;
            }
            Ok(rec.info())
        },
    )
    .with_context(|| format!("revoking admin certificate {cert}"))?;
    println!(
        "revoked admin certificate serial {} ({}): refused from now on",
        info.serial, info.name
    );
    Ok(())
}
