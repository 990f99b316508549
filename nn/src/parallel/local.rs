//! The in-process collective backend: ranks are threads of one process sharing host memory
//! (the CPU backend, and tests). The last rank to arrive computes the result once, so every rank
//! gets the same bits.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use candle_core::{DType, Result, Tensor, bail};

use super::communicator::Communicator;

/// A group of ranks in one process; [`LocalGroup::communicators`] gives one communicator per rank.
#[derive(Debug)]
pub struct LocalGroup;

impl LocalGroup {
    /// The communicators of a group of `size` ranks, in rank order.
    pub fn communicators(size: usize) -> Vec<Arc<dyn Communicator>> {
        let shared = Arc::new(Shared {
            size,
            state: Mutex::new(Round {
                generation: 0,
                inputs: vec![None; size],
                arrived: 0,
                result: None,
                aborted: false,
            }),
            done: Condvar::new(),
        });
        (0..size)
            .map(|rank| {
                Arc::new(LocalRank {
                    rank,
                    shared: shared.clone(),
                }) as Arc<dyn Communicator>
            })
            .collect()
    }
}

#[derive(Debug)]
struct Shared {
    size: usize,
    state: Mutex<Round>,
    done: Condvar,
}

/// The collective under way.
#[derive(Debug)]
struct Round {
    /// Collectives completed.
    generation: u64,
    /// Each rank's input to the current collective.
    inputs: Vec<Option<Tensor>>,
    arrived: usize,
    /// The latest collective's result (kept until every rank has read it: no collective can
    /// complete before each rank has entered it, and a rank reads before it enters the next).
    result: Option<std::result::Result<Tensor, String>>,
    aborted: bool,
}

/// One rank of a [`LocalGroup`].
#[derive(Debug)]
struct LocalRank {
    rank: usize,
    shared: Arc<Shared>,
}

impl LocalRank {
    fn lock(&self) -> MutexGuard<'_, Round> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Deposits `x`, waits for every rank, and returns `combine` of the inputs in rank order
    /// (computed by the last rank to arrive).
    fn collective(
        &self,
        x: &Tensor,
        combine: impl FnOnce(&[Tensor]) -> Result<Tensor>,
    ) -> Result<Tensor> {
        if self.shared.size == 1 {
            return combine(std::slice::from_ref(x));
        }
        let mut round = self.lock();
        if round.aborted {
            bail!("collective: another rank failed");
        }
        round.inputs[self.rank] = Some(x.clone());
        round.arrived += 1;
        let generation = round.generation;
        if round.arrived == self.shared.size {
            let inputs: Option<Vec<Tensor>> = round.inputs.iter_mut().map(Option::take).collect();
            let result = match inputs {
                Some(inputs) => combine(&inputs).map_err(|e| e.to_string()),
                None => Err("collective: a rank's input is missing".to_string()),
            };
            round.result = Some(result);
            round.arrived = 0;
            round.generation += 1;
            self.shared.done.notify_all();
        } else {
            while round.generation == generation && !round.aborted {
                round = self
                    .shared
                    .done
                    .wait(round)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if round.generation == generation {
                bail!("collective: another rank failed");
            }
        }
        match &round.result {
            Some(Ok(t)) => Ok(t.clone()),
            Some(Err(e)) => bail!("{e}"),
            None => bail!("collective: no result"),
        }
    }
}

impl Communicator for LocalRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        self.collective(x, |inputs| {
            let [first, rest @ ..] = inputs else {
                bail!("all-reduce over no ranks");
            };
            if rest.is_empty() {
                return Ok(first.clone());
            }
            // Summed in f32 in rank order, rounded once.
            let mut sum = first.to_dtype(DType::F32)?;
            for t in rest {
                sum = (sum + t.to_dtype(DType::F32)?)?;
            }
            sum.to_dtype(first.dtype())
        })
    }

    fn all_gather(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        self.collective(x, |inputs| Tensor::cat(inputs, dim))
    }

    fn abort(&self) {
        let mut round = self.lock();
        round.aborted = true;
        self.shared.done.notify_all();
    }

    fn recover(&self) {
        let mut round = self.lock();
        round.aborted = false;
        round.arrived = 0;
        round.inputs.iter_mut().for_each(|i| *i = None);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn every_rank_gets_the_sum_and_the_gather() {
        let comms = LocalGroup::communicators(3);
        let results: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .iter()
                .map(|c| {
                    s.spawn(move || {
                        let r = c.rank() as f32;
                        let x = Tensor::new(&[r, 10.0 * r], &Device::Cpu).unwrap();
                        let sum = c.all_reduce_sum(&x).unwrap().to_vec1().unwrap();
                        let all = c.all_gather(&x, 0).unwrap().to_vec1().unwrap();
                        (sum, all)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (sum, all) in results {
            assert_eq!(sum, [3.0, 30.0]);
            assert_eq!(all, [0.0, 0.0, 1.0, 10.0, 2.0, 20.0]);
        }
    }

    #[test]
    fn an_aborted_rank_wakes_the_others_and_recovery_restores_the_group() {
        let comms = LocalGroup::communicators(2);
        let x = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| comms[0].all_reduce_sum(&x));
            comms[1].abort();
            assert!(waiter.join().unwrap().is_err());
        });
        comms.iter().for_each(|c| c.recover());
        let sums: Vec<f32> = std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .iter()
                .map(|c| s.spawn(|| c.all_reduce_sum(&x).unwrap().to_vec1::<f32>().unwrap()[0]))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(sums, [2.0, 2.0]);
    }
}
