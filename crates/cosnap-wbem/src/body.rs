//! The response body: either whole (sent with a `Content-Length`), or chunks that a
//! producer thread writes while earlier chunks are on the wire (sent chunked), so a large
//! enumeration never sits in server memory whole.
//!
//! The producer blocks when [`STREAM_DEPTH`] chunks are waiting: a client that reads
//! slowly slows the producer down instead of growing a buffer. A producer that fails after
//! the head went out sends an error, which makes hyper drop the connection without the
//! final chunk, so the client sees a broken response rather than a complete-looking
//! truncated one.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Bytes, Frame, SizeHint};
use tokio::sync::mpsc;

/// Chunks a streamed body may have waiting for the client.
pub const STREAM_DEPTH: usize = 4;

/// What a producer sends: a chunk, or the failure that ends the response.
pub type Chunk = Result<Bytes, std::io::Error>;

/// A response body.
#[derive(Debug)]
pub struct Body(Inner);

#[derive(Debug)]
enum Inner {
    Whole(Option<Bytes>),
    Streamed(mpsc::Receiver<Chunk>),
}

impl Body {
    /// A body sent at once.
    pub fn whole(bytes: impl Into<Bytes>) -> Self {
        Body(Inner::Whole(Some(bytes.into())))
    }

    /// A streamed body and the sender its producer writes to (dropping it ends the body).
    pub fn streamed() -> (Self, mpsc::Sender<Chunk>) {
        let (tx, rx) = mpsc::channel(STREAM_DEPTH);
        (Body(Inner::Streamed(rx)), tx)
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().0 {
            Inner::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Streamed(rx) => rx.poll_recv(cx).map(|c| c.map(|c| c.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(&self.0, Inner::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Streamed(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn streamed_chunks_arrive_in_order_and_errors_end_the_body() {
        let (body, tx) = Body::streamed();
        std::thread::spawn(move || {
            for part in ["<a>", "b", "</a>"] {
                tx.blocking_send(Ok(Bytes::from(part))).unwrap();
            }
        });
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"<a>b</a>");

        let (body, tx) = Body::streamed();
        tx.send(Ok(Bytes::from("x"))).await.unwrap();
        tx.send(Err(std::io::Error::other("provider failed")))
            .await
            .unwrap();
        assert!(body.collect().await.is_err());
    }

    #[test]
    fn whole_body_has_an_exact_length() {
        let body = Body::whole("12345");
        assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(5));
    }
}
