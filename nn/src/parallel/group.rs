//! A thread per rank: [`RankGroup::run`] runs one closure on every rank at once (rank 0 on the
//! calling thread, the others on threads the group keeps) and returns when all are done, so the
//! closure may borrow the caller's data, as with `std::thread::scope`, without a thread spawn per
//! call.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::communicator::Communicator;

/// A job for one rank's thread.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why one rank's part of [`RankGroup::run`] gave no result.
#[derive(Debug, thiserror::Error)]
pub enum RankFailure<E> {
    /// The rank's closure failed.
    #[error("rank {rank}: {error}")]
    Failed {
        /// The rank.
        rank: usize,
        /// Its error.
        error: E,
    },
    /// The rank's closure panicked.
    #[error("rank {rank} panicked")]
    Panicked {
        /// The rank.
        rank: usize,
    },
}

/// The ranks of one tensor-parallel model: their communicators and the threads that run them.
#[derive(Debug)]
pub struct RankGroup {
    comms: Vec<Arc<dyn Communicator>>,
    /// Job queues of ranks 1.. (rank 0 runs on the caller's thread).
    workers: Vec<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    /// Held through each [`RankGroup::run`]: two callers' jobs never interleave on the ranks
    /// (their collectives would pair up wrongly).
    calls: Mutex<()>,
}

impl RankGroup {
    /// A group over `comms` (one per rank, in rank order), starting a thread for every rank but
    /// the first.
    pub fn new(comms: Vec<Arc<dyn Communicator>>) -> std::io::Result<Self> {
        let mut workers = Vec::new();
        let mut threads = Vec::new();
        for rank in 1..comms.len() {
            let (tx, rx): (Sender<Job>, Receiver<Job>) = channel();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dvd-rank-{rank}"))
                    .spawn(move || {
                        while let Ok(job) = rx.recv() {
                            job();
                        }
                    })?,
            );
            workers.push(tx);
        }
        Ok(Self {
            comms,
            workers,
            threads,
            calls: Mutex::new(()),
        })
    }

    /// Ranks in the group.
    pub fn size(&self) -> usize {
        self.comms.len()
    }

    /// Rank `rank`'s communicator.
    pub fn communicator(&self, rank: usize) -> &Arc<dyn Communicator> {
        &self.comms[rank]
    }

    /// Runs `f(rank)` on every rank at once and returns the results in rank order once every
    /// rank is done. A rank whose closure fails or panics aborts its communicator, so the others
    /// fail out of their collectives instead of waiting; the group is recovered before returning.
    /// Calls from several threads take turns. `f` must not call `run` itself.
    pub fn run<R, E, F>(&self, f: F) -> Vec<Result<R, RankFailure<E>>>
    where
        R: Send,
        E: Send,
        F: Fn(usize) -> Result<R, E> + Sync,
    {
        let _turn = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let one = |rank: usize| -> Result<R, RankFailure<E>> {
            let outcome = catch_unwind(AssertUnwindSafe(|| f(rank)));
            let result = match outcome {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(error)) => Err(RankFailure::Failed { rank, error }),
                Err(_) => Err(RankFailure::Panicked { rank }),
            };
            if result.is_err() {
                self.comms[rank].abort();
            }
            result
        };
        let (done_tx, done_rx) = channel::<(usize, Result<R, RankFailure<E>>)>();
        let mut sent = 0;
        for (i, worker) in self.workers.iter().enumerate() {
            let rank = i + 1;
            let done = done_tx.clone();
            let one = &one;
            let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
                // Sending is the job's last use of anything it borrows.
                let _ = done.send((rank, one(rank)));
            });
            // SAFETY: the job borrows `one` (and through it `f` and `self`), which live until
            // this function returns; it does not return before receiving every queued job's
            // result below, and a job sends its result as its last use of those borrows (a panic
            // in `f` is caught inside `one`). A job that could not be queued is dropped here,
            // unrun.
            #[allow(unsafe_code)]
            let job: Job =
                unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(job) };
            if worker.send(job).is_ok() {
                sent += 1;
            }
        }
        drop(done_tx);
        let mut results: Vec<Option<Result<R, RankFailure<E>>>> =
            (0..self.size()).map(|_| None).collect();
        results[0] = Some(one(0));
        for _ in 0..sent {
            match done_rx.recv() {
                Ok((rank, result)) => results[rank] = Some(result),
                Err(_) => break,
            }
        }
        let results: Vec<Result<R, RankFailure<E>>> = results
            .into_iter()
            .enumerate()
            .map(|(rank, r)| r.unwrap_or(Err(RankFailure::Panicked { rank })))
            .collect();
        if results.iter().any(Result::is_err) {
            self.comms.iter().for_each(|c| c.recover());
        }
        results
    }
}

impl Drop for RankGroup {
    fn drop(&mut self) {
        self.workers.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::parallel::LocalGroup;

    #[test]
    fn ranks_run_together_on_borrowed_data() {
        let group = RankGroup::new(LocalGroup::communicators(3)).unwrap();
        let inputs = [1f32, 2.0, 4.0];
        let sums = group.run(|rank| {
            let x = Tensor::new(&[inputs[rank]], &Device::Cpu)?;
            group
                .communicator(rank)
                .all_reduce_sum(&x)?
                .to_vec1::<f32>()
        });
        for sum in sums {
            assert_eq!(sum.unwrap(), [7.0]);
        }
    }

    #[test]
    fn callers_on_several_threads_take_turns() {
        let group = RankGroup::new(LocalGroup::communicators(2)).unwrap();
        std::thread::scope(|s| {
            for caller in 0..4u8 {
                let group = &group;
                s.spawn(move || {
                    for _ in 0..50 {
                        let x = Tensor::new(&[f32::from(caller)], &Device::Cpu).unwrap();
                        for sum in group.run(|rank| group.communicator(rank).all_reduce_sum(&x)) {
                            assert_eq!(
                                sum.unwrap().to_vec1::<f32>().unwrap(),
                                [2.0 * f32::from(caller)]
                            );
                        }
                    }
                });
            }
        });
    }

    #[test]
    fn a_failing_rank_fails_the_call_without_hanging_and_the_group_recovers() {
        let group = RankGroup::new(LocalGroup::communicators(2)).unwrap();
        let x = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        let results = group.run(|rank| {
            if rank == 1 {
                candle_core::bail!("rank 1 refuses");
            }
            group.communicator(rank).all_reduce_sum(&x)
        });
        assert!(results.iter().all(Result::is_err));
        let results = group.run(|rank| {
            if rank == 0 {
                panic!("rank 0 panics");
            }
            group.communicator(rank).all_reduce_sum(&x)
        });
        assert!(matches!(results[0], Err(RankFailure::Panicked { rank: 0 })));
        assert!(results[1].is_err());
        let results = group.run(|rank| group.communicator(rank).all_reduce_sum(&x));
        assert!(results.iter().all(Result::is_ok));
    }
}
