//! Compression on every core: the pieces of data blocks ([`Piece`]) are compressed by a set of
//! threads shared by every archive being written, one per core, and each writer takes its
//! pieces back in its own order. A table copied by one session compresses on all cores as
//! well as one whose ranges several sessions copy.

use std::collections::VecDeque;
use std::io;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};

use super::archive::Piece;
use crate::compression::Compression;

type Task = Box<dyn FnOnce() + Send>;

/// A piece being compressed.
pub struct Pending(Receiver<io::Result<Piece>>);

impl Pending {
    /// Waits for the piece (on a blocking thread).
    pub fn wait(self) -> io::Result<Piece> {
        self.0
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("a compression thread panicked")))
    }
}

/// Starts compressing `data` as a piece that more data follows in its block.
pub fn compress(compression: Compression, data: Vec<u8>) -> Pending {
    let (tx, rx) = sync_channel(1);
    let task: Task = Box::new(move || {
        let _ = tx.send(Piece::compress(compression, &data, false));
    });
    // The threads never end while the process runs: a send cannot fail.
    let _ = pool().lock().expect("compression pool").send(task);
    Pending(rx)
}

/// Threads compressing pieces: one per core.
pub fn threads() -> usize {
    super::archive::cores()
}

fn pool() -> &'static Mutex<Sender<Task>> {
    static POOL: OnceLock<Mutex<Sender<Task>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = channel::<Task>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..threads() {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("compress-{i}"))
                .spawn(move || loop {
                    let task = match rx.lock().expect("compression queue").recv() {
                        Ok(t) => t,
                        Err(_) => return,
                    };
                    task();
                })
                .expect("a compression thread");
        }
        Mutex::new(tx)
    })
}

/// The pieces one writer has in flight, oldest first: at most about one per core, so memory
/// stays a few MiB per archive whatever the table size.
#[derive(Default)]
pub struct InFlight(VecDeque<Pending>);

impl InFlight {
    /// Adds a piece; returns the oldest ones once too many are in flight.
    pub fn push(&mut self, p: Pending) -> impl Iterator<Item = Pending> + '_ {
        self.0.push_back(p);
        let over = self.0.len().saturating_sub(threads() + 1);
        self.0.drain(..over)
    }

    /// Every piece still in flight, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = Pending> + '_ {
        self.0.drain(..)
    }
}
