//! Length-prefixed protobuf frames: how a function process and its node's proxy talk on the
//! proxy's instance socket (a Unix socket).
//!
//! A frame is a 4-byte little-endian length, then that many bytes holding one encoded message:
//! [`InstanceMessage`](crate::InstanceMessage) from the instance, [`ProxyMessage`](crate::ProxyMessage)
//! from the proxy. This replaced a gRPC stream on the same messages: between two processes of
//! one node, HTTP/2's framing, flow control and the TCP stack cost more than the calls they
//! carried (measured under `yr bench rest`).
//!
//! Invariants: no frame is longer than [`MAX_FRAME`]; a reader that meets a longer length or a
//! body that does not decode gives up on the connection, since a byte stream cannot be
//! resynchronised after a bad frame. Writers never produce either ([`encode`] refuses).

use std::io::{self, Read};

use prost::Message;

/// Largest call or reply payload a frame carries. Large data belongs in the data worker, passed
/// by ID.
pub const MAX_PAYLOAD: usize = 256 << 20;

/// Largest frame body: a payload at the limit plus its message's other fields.
pub const MAX_FRAME: usize = MAX_PAYLOAD + (64 << 10);

/// Body bytes [`read`] reserves before any arrive. Beyond this the buffer grows with the bytes
/// received, so a head alone (4 bytes announcing up to [`MAX_FRAME`]) cannot make a reader
/// allocate and zero a frame's worth of memory; found by fuzzing (`decode_instance_frame`).
/// Readers reuse their buffer, so a large frame pays for the growth once per connection.
pub const EAGER_BODY: usize = 64 << 10;

/// Appends `msg` as one frame to `out`; refuses a message over [`MAX_FRAME`], naming its size.
pub fn encode(msg: &impl Message, out: &mut Vec<u8>) -> io::Result<()> {
    let len = msg.encoded_len();
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a message of {len} bytes is over the {MAX_FRAME}-byte frame limit"),
        ));
    }
    out.reserve(4 + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    msg.encode(out)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
}

/// One message as a frame of its own.
pub fn to_frame(msg: &impl Message) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    encode(msg, &mut out)?;
    Ok(out)
}

/// The body length a frame's 4-byte head announces, checked against [`MAX_FRAME`].
pub fn body_len(head: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_le_bytes(head) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame announces {len} bytes, over the {MAX_FRAME}-byte limit"),
        ));
    }
    Ok(len)
}

/// Decodes one frame's body.
pub fn decode<M: Message + Default>(body: &[u8]) -> io::Result<M> {
    M::decode(body).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {} bytes does not decode: {e}", body.len()),
        )
    })
}

/// Reads the next frame from `r` (best given a buffered reader) into `buf` and decodes it.
/// `Ok(None)` is the peer closing between frames; closing inside one is an error.
pub fn read<M: Message + Default>(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Option<M>> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed inside a frame's head",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = body_len(head)?;
    buf.clear();
    buf.reserve(len.min(EAGER_BODY));
    let got = r.by_ref().take(len as u64).read_to_end(buf)?;
    if got < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the connection closed inside a frame of {len} bytes"),
        ));
    }
    decode(buf).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{instance_message, CallResult, InstanceMessage};

    fn result(call_id: u64, payload: &[u8]) -> InstanceMessage {
        InstanceMessage {
            msg: Some(instance_message::Msg::Result(CallResult {
                call_id,
                payload: payload.to_vec(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn frames_round_trip_back_to_back() {
        let mut wire = Vec::new();
        for i in 0..3u64 {
            encode(&result(i, &vec![i as u8; i as usize * 1000]), &mut wire).unwrap();
        }
        let mut r = io::Cursor::new(wire);
        let mut buf = Vec::new();
        for i in 0..3u64 {
            let m: InstanceMessage = read(&mut r, &mut buf).unwrap().unwrap();
            assert_eq!(m, result(i, &vec![i as u8; i as usize * 1000]));
        }
        assert!(read::<InstanceMessage>(&mut r, &mut buf).unwrap().is_none());
    }

    #[test]
    fn bad_frames_are_errors_that_say_why() {
        let mut buf = Vec::new();
        // A length over the limit.
        let mut r = io::Cursor::new(u32::MAX.to_le_bytes().to_vec());
        let e = read::<InstanceMessage>(&mut r, &mut buf).unwrap_err();
        assert!(e.to_string().contains("over the"), "{e}");
        // A body cut short.
        let mut wire = to_frame(&result(1, b"hello")).unwrap();
        wire.truncate(wire.len() - 2);
        let e = read::<InstanceMessage>(&mut io::Cursor::new(wire), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        // A head cut short.
        let e = read::<InstanceMessage>(&mut io::Cursor::new(vec![5u8, 0]), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        // A body that is not the message.
        let mut wire = 3u32.to_le_bytes().to_vec();
        wire.extend_from_slice(&[0xff, 0xff, 0xff]);
        let e = read::<InstanceMessage>(&mut io::Cursor::new(wire), &mut buf).unwrap_err();
        assert!(e.to_string().contains("does not decode"), "{e}");
    }

    /// Regression (fuzzing): a head announcing the largest frame, followed by a few bytes and a
    /// close, made the reader allocate and zero the whole frame first.
    #[test]
    fn a_head_alone_does_not_allocate_the_frame_it_announces() {
        let mut wire = (MAX_FRAME as u32).to_le_bytes().to_vec();
        wire.extend_from_slice(b"abc");
        let mut buf = Vec::new();
        let e = read::<InstanceMessage>(&mut io::Cursor::new(wire), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        assert!(e.to_string().contains(&MAX_FRAME.to_string()), "{e}");
        assert!(
            buf.capacity() <= 2 * EAGER_BODY,
            "{} bytes reserved for 3 received",
            buf.capacity()
        );
    }

    #[test]
    fn a_frame_larger_than_the_eager_reserve_reads_whole() {
        let big = vec![7u8; 3 * EAGER_BODY + 5];
        let mut wire = to_frame(&result(9, &big)).unwrap();
        encode(&result(10, b"next"), &mut wire).unwrap();
        let mut r = io::Cursor::new(wire);
        let mut buf = Vec::new();
        let m: InstanceMessage = read(&mut r, &mut buf).unwrap().unwrap();
        assert_eq!(m, result(9, &big));
        let m: InstanceMessage = read(&mut r, &mut buf).unwrap().unwrap();
        assert_eq!(
            m,
            result(10, b"next"),
            "the next frame starts where the last ended"
        );
    }
}
