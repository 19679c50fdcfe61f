//! Frame decoder, stream hello and message decoding: everything a peer's
//! bytes reach before any authentication of their content.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seaport_shared::codec::{self, FrameDecoder};
use seaport_shared::wire::{
    AdminRequest, AdminResponse, AgentMessage, CoordinatorMessage, EnrollRequest,
    EnrollResponse, StreamHello, CONTROL_FRAME_LIMIT,
};

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // The first byte picks the split points, the rest is the stream.
    let chunk = usize::from(data[0]).max(1);
    let bytes = &data[1..];

    if bytes.len() >= 7 {
        if let Ok(hello) = StreamHello::parse(&bytes[..7]) {
            let _ = hello.check_version();
            assert_eq!(StreamHello::parse(&hello.to_bytes()).ok(), Some(hello));
        }
    }

    let mut dec = FrameDecoder::new(CONTROL_FRAME_LIMIT);
    for piece in bytes.chunks(chunk) {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(body)) => {
                    assert!(body.len() <= CONTROL_FRAME_LIMIT as usize);
                    decode_all(&body);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    decode_all(bytes);
});

fn decode_all(body: &[u8]) {
    if let Ok(m) = codec::decode::<AgentMessage>(body) {
        // Whatever decodes must encode back to the same bytes.
        assert_eq!(codec::encode(&m).unwrap(), body);
    }
    let _ = codec::decode::<CoordinatorMessage>(body);
    let _ = codec::decode::<EnrollRequest>(body);
    let _ = codec::decode::<EnrollResponse>(body);
    let _ = codec::decode::<AdminRequest>(body);
    let _ = codec::decode::<AdminResponse>(body);
}
