//! Mixture-of-experts blocks (Qwen3-MoE): one implementation for every device, with no per-expert
//! loop and nothing copied to the host.
//!
//! A block routes each token to `top_k` experts ([`route`]: softmax in f32, transformers' top-k
//! order, optional renormalisation), sorts the (token, choice) pairs by expert once ([`group`],
//! [`permute`]) so each expert's rows are contiguous, runs the experts as two grouped GEMMs over
//! those row ranges ([`grouped_matmul`]; an expert without rows is never read), and sums each
//! token's rows back with their weights ([`combine`]). On the CPU every step is ours (a tile
//! kernel over weights packed in panels at load, summing each output the same way whatever its
//! batch, so the block is batch invariant); on CUDA every step is a `dvd-kernels` kernel reading
//! the per-expert row offsets from device memory, so a step never waits for the host.

mod combine;
mod element;
mod experts;
mod grouped;
mod grouping;
mod matrices;
mod routing;
mod tile;

pub use combine::combine;
pub use experts::Experts;
pub use grouping::{Grouping, group, permute};
pub use matrices::Matrices;
pub use routing::{Routing, route};

use candle_core::{Device, Result, Tensor, bail};

use crate::host::with_values;
use crate::{Linear, fused};
use grouped::{Group, grouped_matmul_cpu, matmul_cpu};

/// A routed SwiGLU mixture of experts.
#[derive(Debug, Clone)]
pub struct Moe {
    router: Router,
    experts: Experts,
    /// The first expert `experts` holds: nonzero, or `experts` holding fewer than the router
    /// routes to, on a rank of an expert-parallel group.
    first_expert: usize,
    /// Experts the router routes to.
    routed: usize,
    top_k: usize,
    renormalise: bool,
}

impl Moe {
    /// A block from its `[experts, hidden]` router and its experts; each token goes to `top_k`
    /// experts, whose weights are renormalised to sum to one when `renormalise`.
    pub fn new(router: Linear, experts: Experts, top_k: usize, renormalise: bool) -> Result<Self> {
        let (count, hidden) = router.weight().dims2()?;
        if count != experts.count() {
            bail!(
                "moe: router [{count}, {hidden}] for {} experts",
                experts.count()
            );
        }
        Self::holding(router, experts, 0, top_k, renormalise)
    }

    /// The part of a block an expert-parallel rank computes: the whole router, and the experts
    /// `first_expert..first_expert + experts.count()`. Its output is the held experts' share of
    /// each token's sum (zero for a token routed elsewhere only); the ranks' shares add up to the
    /// block's output.
    pub fn holding(
        router: Linear,
        experts: Experts,
        first_expert: usize,
        top_k: usize,
        renormalise: bool,
    ) -> Result<Self> {
        let (count, hidden) = router.weight().dims2()?;
        if experts.count() == 0
            || first_expert + experts.count() > count
            || hidden != experts.hidden()
        {
            bail!(
                "moe: router [{count}, {hidden}] for experts {first_expert}..{} of width {}",
                first_expert + experts.count(),
                experts.hidden()
            );
        }
        if top_k == 0 || top_k > count {
            bail!("moe: top_k {top_k} with {count} experts");
        }
        let router = match (router.weight().device().is_cpu(), router.bias()) {
            (true, None) => Router::Panels(Matrices::new(&router.weight().unsqueeze(0)?)?),
            _ => Router::Linear(router),
        };
        Ok(Self {
            router,
            experts,
            first_expert,
            routed: count,
            top_k,
            renormalise,
        })
    }

    /// The experts.
    pub fn experts(&self) -> &Experts {
        &self.experts
    }

    /// Experts per token.
    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// The router's weight, `[experts, hidden]` (a copy on the CPU, where it is kept in panels).
    pub fn router_weight(&self) -> Result<Tensor> {
        match &self.router {
            Router::Panels(panels) => panels.stacked()?.squeeze(0),
            Router::Linear(linear) => Ok(linear.weight().clone()),
        }
    }

    /// Elements of the router's weight (and bias).
    pub fn router_elements(&self) -> usize {
        match &self.router {
            Router::Panels(panels) => panels.count() * panels.n() * panels.k(),
            Router::Linear(linear) => {
                linear.weight().elem_count() + linear.bias().map_or(0, Tensor::elem_count)
            }
        }
    }

    /// Each token's experts and weights for `x [tokens, hidden]`.
    pub fn route(&self, x: &Tensor) -> Result<Routing> {
        let logits = match &self.router {
            Router::Panels(panels) => matmul_cpu(&x.contiguous()?, panels)?,
            Router::Linear(linear) => linear.forward(x)?,
        };
        route(&logits, self.top_k, self.renormalise)
    }

    /// Applies the block to `x [tokens, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let routing = self.route(x)?;
        let held = self.experts.count();
        if held == self.routed {
            let grouping = group(&routing.experts, held)?;
            let rows = permute(x, &grouping)?;
            return combine(
                &self.experts_on(&rows, &grouping.offsets)?,
                &grouping,
                &routing,
            );
        }
        // Choices of experts held elsewhere go to a last group this rank never computes; their
        // rows are zero and so are their weights.
        let routing = routing.held_by(self.first_expert, held)?;
        let grouping = group(&routing.experts, held + 1)?;
        let offsets = grouping.offsets.narrow(0, 0, held + 1)?;
        let held_rows = offsets.get(held)?.to_scalar::<u32>()? as usize;
        let pairs = grouping.sources.dim(0)?;
        let mut y = Vec::with_capacity(2);
        if held_rows > 0 {
            let rows = permute(x, &grouping)?.narrow(0, 0, held_rows)?;
            y.push(self.experts_on(&rows, &offsets)?);
        }
        if held_rows < pairs {
            y.push(Tensor::zeros(
                (pairs - held_rows, x.dim(1)?),
                x.dtype(),
                x.device(),
            )?);
        }
        combine(&Tensor::cat(&y, 0)?, &grouping, &routing)
    }

    /// The held experts on `rows` grouped by `offsets` (`[held + 1]`).
    fn experts_on(&self, rows: &Tensor, offsets: &Tensor) -> Result<Tensor> {
        let gate_up = grouped_matmul(rows, self.experts.gate_up(), offsets)?;
        grouped_matmul(&fused::silu_mul(&gate_up)?, self.experts.down(), offsets)
    }
}

/// The router's `[experts, hidden]` layer, kept in the form the block's device multiplies.
#[derive(Debug, Clone)]
enum Router {
    /// On the CPU without a bias: in the tile kernel's panels, so routing does not depend on
    /// the batch either.
    Panels(Matrices),
    /// Elsewhere: the layer itself.
    Linear(Linear),
}

/// `x [rows, k]` times the transposed `[n, k]` matrices of `weights`, rows
/// `offsets[e]..offsets[e + 1]` (`offsets [experts + 1]` u32, on `x`'s device) by matrix `e`;
/// `[rows, n]`, accumulated in f32.
pub fn grouped_matmul(x: &Tensor, weights: &Matrices, offsets: &Tensor) -> Result<Tensor> {
    match x.device() {
        Device::Cpu => {
            let groups = with_values::<u32, _>(offsets, |o| Ok(Group::from_offsets(o)))?;
            grouped_matmul_cpu(&x.contiguous()?, weights, &groups)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => dvd_kernels::grouped_gemm(&x.contiguous()?, weights.data(), offsets),
        #[allow(unreachable_patterns)]
        other => bail!("grouped matmul: no MoE kernels for {other:?}"),
    }
}
