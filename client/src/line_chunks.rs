//! The lines of a blocking reader (standard input for `hush send --lines`), handed out in
//! chunks of the lines that are ready, so that a chunk can go out in a few batched requests
//! while a slow stream still has every line sent soon after it arrives.
//!
//! A thread reads the lines into a bounded channel. [`LineChunks::next_chunk`] waits for one
//! line, then takes the lines that follow it while each arrives within [`LINGER`] of the one
//! before, and closes the chunk when the input pauses that long, ends, or fails, when
//! [`MAX_WAIT`] has passed since its first line, or at [`MAX_CHUNK_LINES`] lines. A line
//! therefore waits at most [`MAX_WAIT`] for company; piped input that is already there comes
//! out in full chunks.

use std::io::BufRead;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// A pause in the input this long ends a chunk.
pub const LINGER: Duration = Duration::from_millis(20);
/// No line waits longer than this for more lines to join its chunk.
pub const MAX_WAIT: Duration = Duration::from_millis(200);
/// The most lines in one chunk (also the bound on lines read ahead of the sender).
pub const MAX_CHUNK_LINES: usize = 256;

/// Chunks of lines read from a reader by a background thread.
#[derive(Debug)]
pub struct LineChunks {
    lines: mpsc::Receiver<std::io::Result<String>>,
    /// A read error that arrived after the lines of the chunk being assembled.
    failed: Option<std::io::Error>,
}

impl LineChunks {
    /// Starts reading `reader` line by line on its own thread (line ends `\n` or `\r\n` are
    /// removed; a read error ends the input after being reported once). The thread stops when
    /// the input ends, fails, or this value is dropped and it next has a line to hand over.
    pub fn spawn<R: BufRead + Send + 'static>(reader: R) -> Self {
        let (tx, lines) = mpsc::channel(MAX_CHUNK_LINES);
        std::thread::spawn(move || {
            for line in reader.lines() {
                let failed = line.is_err();
                if tx.blocking_send(line).is_err() || failed {
                    return;
                }
            }
        });
        Self {
            lines,
            failed: None,
        }
    }

    /// The next chunk (at least one line), `None` at the end of the input, or the read error
    /// (after the lines that came before it).
    pub async fn next_chunk(&mut self) -> Option<std::io::Result<Vec<String>>> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        let first = match self.lines.recv().await? {
            Ok(line) => line,
            Err(e) => return Some(Err(e)),
        };
        let deadline = Instant::now() + MAX_WAIT;
        let mut chunk = vec![first];
        while chunk.len() < MAX_CHUNK_LINES {
            let wait = LINGER.min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, self.lines.recv()).await {
                Ok(Some(Ok(line))) => chunk.push(line),
                Ok(Some(Err(e))) => {
                    self.failed = Some(e);
                    break;
                }
                // The end of the input, or nothing more within the wait.
                Ok(None) | Err(_) => break,
            }
        }
        Some(Ok(chunk))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::io::{Cursor, Read};

    /// Everything, chunk by chunk.
    async fn all(mut chunks: LineChunks) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        while let Some(chunk) = chunks.next_chunk().await {
            out.push(chunk.unwrap());
        }
        out
    }

    fn numbered(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("line {i}")).collect()
    }

    #[tokio::test]
    async fn ready_input_comes_in_full_chunks_in_order() {
        let lines = numbered(2 * MAX_CHUNK_LINES + 5);
        let input = format!("{}\r\n", lines.join("\n"));
        let mut chunks = LineChunks::spawn(Cursor::new(input));
        // Once the reader has filled the channel, a whole chunk is ready.
        let deadline = Instant::now() + Duration::from_secs(30);
        while chunks.lines.len() < MAX_CHUNK_LINES && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let first = chunks.next_chunk().await.unwrap().unwrap();
        assert_eq!(first.len(), MAX_CHUNK_LINES);
        let mut got = vec![first];
        got.extend(all(chunks).await);
        assert!(got.iter().all(|c| c.len() <= MAX_CHUNK_LINES));
        assert_eq!(got.concat(), lines, "every line once, in order, CR removed");
    }

    #[tokio::test]
    async fn empty_input_has_no_chunks() {
        assert!(all(LineChunks::spawn(Cursor::new(""))).await.is_empty());
    }

    /// A reader fed by the test, blocking until the next piece or the end.
    struct Feed {
        pieces: std::sync::mpsc::Receiver<Vec<u8>>,
        current: Cursor<Vec<u8>>,
    }

    impl Read for Feed {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            loop {
                let n = self.current.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                match self.pieces.recv() {
                    Ok(piece) => self.current = Cursor::new(piece),
                    Err(_) => return Ok(0),
                }
            }
        }
    }

    #[tokio::test]
    async fn a_line_of_a_slow_stream_does_not_wait_for_the_next() {
        let (writer, pieces) = std::sync::mpsc::channel();
        let feed = Feed {
            pieces,
            current: Cursor::new(Vec::new()),
        };
        let mut chunks = LineChunks::spawn(std::io::BufReader::new(feed));
        writer.send(b"first\n".to_vec()).unwrap();
        // The input stays open: the chunk must come without the rest of it.
        let chunk = tokio::time::timeout(Duration::from_secs(10), chunks.next_chunk())
            .await
            .expect("the ready lines are handed out while the input stays open")
            .unwrap()
            .unwrap();
        assert_eq!(chunk, ["first"]);
        writer.send(b"second\nthird\n".to_vec()).unwrap();
        drop(writer);
        let rest: Vec<Vec<String>> = all(chunks).await;
        assert_eq!(rest.concat(), ["second", "third"]);
    }

    /// A reader that yields its lines, then fails.
    struct Failing(Cursor<Vec<u8>>);

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(std::io::Error::other("broken input")),
                n => Ok(n),
            }
        }
    }

    #[tokio::test]
    async fn a_read_error_comes_after_the_lines_before_it() {
        let reader = std::io::BufReader::new(Failing(Cursor::new(b"a\nb\n".to_vec())));
        let mut chunks = LineChunks::spawn(reader);
        let mut lines = Vec::new();
        let e = loop {
            match chunks.next_chunk().await.unwrap() {
                Ok(chunk) => lines.extend(chunk),
                Err(e) => break e,
            }
        };
        assert_eq!(lines, ["a", "b"]);
        assert_eq!(e.to_string(), "broken input");
        assert!(chunks.next_chunk().await.is_none());
    }
}
