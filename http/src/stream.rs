//! The document streamed as it is written: the writer (on a blocking thread) hands chunks over
//! a small bounded channel to the response body, so at most a few chunks are in memory besides
//! what the document writer itself keeps (what is live, not the history).

use axum::body::{Body, Bytes};
use http_body::Frame;
use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// How much is gathered before a chunk is handed on.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight between the writer and the connection.
const CHUNKS_IN_FLIGHT: usize = 4;

type Chunk = Result<Bytes, io::Error>;

/// An `io::Write` whose bytes become chunks of a response body; writing fails once the client
/// has gone (the receiver was dropped), which stops the writer.
pub struct ChunkWriter {
    tx: mpsc::Sender<Chunk>,
    buffer: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }

    /// End the body with an error: the client sees the response cut short, never a document
    /// that looks whole.
    pub fn fail(self, error: io::Error) {
        let _ = self.tx.blocking_send(Err(error));
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// The receiving end: what the writer produced, in order.
pub struct Chunks {
    rx: mpsc::Receiver<Chunk>,
}

/// A connected writer and body source.
pub fn channel() -> (ChunkWriter, Chunks) {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    (ChunkWriter { tx, buffer: Vec::with_capacity(CHUNK) }, Chunks { rx })
}

impl Chunks {
    /// The first chunk (or the error that came before any byte), then the rest as a body.
    pub async fn first(mut self) -> (Option<Chunk>, Chunks) {
        let first = self.rx.recv().await;
        (first, self)
    }

    /// A response body of `first` followed by every later chunk.
    pub fn into_body(self, first: Bytes) -> Body {
        Body::new(ChunkBody { first: Some(first), rest: self.rx })
    }
}

struct ChunkBody {
    first: Option<Bytes>,
    rest: mpsc::Receiver<Chunk>,
}

impl http_body::Body for ChunkBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        self.rest.poll_recv(cx).map(|chunk| chunk.map(|c| c.map(Frame::data)))
    }
}
