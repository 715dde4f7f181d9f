//! A discovery stream's requests: gRPC messages (a 5-byte prefix, then the protobuf) read
//! from an HTTP/2 stream. The size limit is checked on the prefix, before the body is
//! buffered, so a client cannot make the server hold more than one message of at most
//! `--max-request-bytes` (plus the chunk that brought it); window is returned to the client
//! as bytes are taken in.

use std::marker::PhantomData;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tonic::Status;

use super::trim::{self, Request};

/// Bytes of the gRPC message prefix: a compression flag and a big-endian length.
pub const PREFIX: usize = 5;
/// A drained buffer larger than this is freed: an idle stream holds none.
const KEEP_CAPACITY: usize = 4 * 1024;

/// The gRPC message framing, without I/O: bytes in, messages out (what the fuzz driver
/// `trust_sds::fuzzing::grpc_frames` exercises).
#[derive(Debug)]
pub struct MessageBuffer {
    buf: BytesMut,
    max: usize,
}

impl MessageBuffer {
    /// `max`: the largest message accepted, in bytes (its prefix not counted).
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes held: at most one message and its prefix, plus the last chunk pushed.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next whole message, if one is buffered. An error is final: the stream must end.
    pub fn message<T: Request>(&mut self) -> Result<Option<T>, Status> {
        let Some(prefix) = self.buf.get(..PREFIX) else {
            return Ok(None);
        };
        match prefix[0] {
            0 => {}
            1 => {
                return Err(Status::unimplemented(
                    "compressed requests are not supported; send uncompressed messages",
                ));
            }
            flag => {
                return Err(Status::internal(format!(
                    "invalid gRPC compression flag {flag} (expected 0 or 1)"
                )));
            }
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.max {
            return Err(Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                self.max
            )));
        }
        if self.buf.len() < PREFIX + len {
            self.buf.reserve(PREFIX + len - self.buf.len());
            return Ok(None);
        }
        // Decoded in place: splitting the buffer would make it shared, an allocation per
        // request. The node is reduced to its id ([`trim`]).
        let message = trim::decode::<T>(&self.buf[PREFIX..PREFIX + len])
            .map_err(|e| Status::internal(format!("cannot decode the request: {e}")));
        self.buf.advance(PREFIX + len);
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = BytesMut::new();
        }
        message.map(Some)
    }
}

/// Why a stream's requests stopped.
#[derive(Debug)]
pub enum RequestError {
    /// The client sent something that is not a request this server takes: the stream ends
    /// with this status, which says why.
    Invalid(Status),
    /// The stream or the connection broke (a reset, a closed socket): nobody is listening.
    Gone(h2::Error),
}

/// The requests of one stream.
pub struct Requests<T> {
    body: h2::RecvStream,
    messages: MessageBuffer,
    ended: bool,
    _message: PhantomData<fn() -> T>,
}

impl<T: Request> Requests<T> {
    pub fn new(body: h2::RecvStream, max: usize) -> Self {
        Self {
            body,
            messages: MessageBuffer::new(max),
            ended: false,
            _message: PhantomData,
        }
    }

    /// The next request; `None` when the client ended its side. Cancel-safe: a partial
    /// message stays buffered for the next call.
    pub async fn message(&mut self) -> Result<Option<T>, RequestError> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    pub fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<T>, RequestError>> {
        loop {
            if let Some(message) = self.messages.message().map_err(RequestError::Invalid)? {
                return Poll::Ready(Ok(Some(message)));
            }
            if self.ended {
                return Poll::Ready(if self.messages.is_empty() {
                    Ok(None)
                } else {
                    Err(RequestError::Invalid(Status::internal(
                        "the request stream ended in the middle of a message",
                    )))
                });
            }
            match ready!(self.body.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    // The stream's window goes back as soon as the bytes are ours; what
                    // bounds memory is the size check on each prefix.
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.messages.push(&chunk);
                }
                Some(Err(e)) => return Poll::Ready(Err(RequestError::Gone(e))),
                None => self.ended = true,
            }
        }
    }
}
