//! Fast CPU kernels for what training time is spent in, as candle custom ops with their own
//! backward passes.
//!
//! candle's CPU backward passes are built from generic pieces: the input gradient of a
//! convolution is a direct-loop `conv_transpose2d`, ReLU's gradient is a comparison, a cast
//! and a multiplication, max-pooling's is an upsample, an equality mask and an average pool.
//! Each op here does the same maths in one or two passes over memory, with the matrix
//! products in the `gemm` crate and the batch split over rayon's threads.
//!
//! Every public function takes ordinary tensors. On the CPU with `f32` data it runs the
//! kernel here (making the input contiguous first if it is not); on any other device or dtype
//! it falls back to candle's own ops, so the same model code runs on a GPU build.
//!
//! Reductions over the batch (weight and bias gradients, batch statistics) are split into
//! chunks fixed by the tensor shape alone and summed in a fixed order, so results are
//! bit-identical from run to run whatever the number of threads.
//!
//! Fused forms (`max_pool2d_relu`, `batch_norm_train_relu`, `batch_norm_eval_relu`,
//! `add_relu`, `conv2d_batch_norm_train`, `basic_block_train`) compute exactly what the separate ops compute, with
//! one graph node instead of two or three: candle's backward pass allocates a zeroed gradient and adds into it for every node,
//! which for activation-sized tensors costs as much as the op itself.
//!
//! Two things outside this module decide much of the speed: gemm compiled with debug
//! assertions (as the dev profile compiles dependencies) runs at half its speed, and glibc's
//! default malloc gives large freed blocks back to the OS, so each new activation-sized
//! tensor page-faults; raising `glibc.malloc.mmap_threshold` and `trim_threshold` (through
//! `GLIBC_TUNABLES` or `mallopt`) removes most of that. Third, candle 0.11 runs its own
//! element-wise CPU ops (the backward pass's gradient sums among them) on a separate
//! spin-waiting thread pool, not rayon's: with as many threads as cores, its workers and
//! rayon's compete, and a profile shows the caller spinning in `BarrierGuard::drop`. Fewer
//! graph nodes (the fused ops here, `basic_block_train` above all) mean fewer such ops.

mod activation;
mod conv;
mod conv_bn;
mod gemm;
mod loss;
mod norm;
mod pool;
mod res_block;

pub use activation::{add_relu, relu};
pub use conv::conv2d;
pub use conv_bn::{conv2d_affine, conv2d_batch_norm_train, ConvBn};
pub use loss::cross_entropy;
pub use norm::{batch_norm_eval, batch_norm_eval_affine, batch_norm_eval_relu, batch_norm_train, batch_norm_train_relu, channel_affine, BatchNormOutput};
pub use pool::{avg_pool2d, max_pool2d, max_pool2d_relu};
pub use res_block::{basic_block_train, BasicBlock, BasicBlockOutput, BatchStats, BlockParams, Shortcut};

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, DType, Device, Layout, Result, Storage, Tensor};

/// Whether `t` can go through the kernels here rather than candle's own ops.
fn fast_path(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The `f32` slice a contiguous CPU storage covers under `layout`.
fn cpu_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &'static str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("{op}: expected f32 data, got {:?}", storage.dtype())
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: input is not contiguous"),
    }
}

/// Runs `f` on the `f32` data of a CPU tensor, made contiguous first if needed.
///
/// Backward passes read their tensors this way rather than through another custom op: the
/// result of a backward pass needs no graph of its own, and a closure can return several
/// gradients where a custom op returns one tensor.
pub(crate) fn with_f32<R>(t: &Tensor, op: &'static str, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("{op}: expected a CPU tensor")
    };
    Ok(f(cpu_slice(cpu, layout, op)?))
}

/// A CPU `f32` tensor owning `data`, with no autograd history.
fn cpu_tensor(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// Runs `f` with this thread's scratch buffer, grown to at least `len` values (contents
/// unspecified).
///
/// Convolutions need an im2col buffer per sample group; allocating it afresh each call costs
/// page faults (the allocator hands large blocks back to the OS) that were a quarter of a
/// training step. rayon's worker threads live as long as the pool, so each keeps one buffer,
/// as large as the largest layer has needed. Nothing depends on its contents between calls.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                *buf = vec![0f32; len];
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (a rayon job stolen while the buffer was in use).
        Err(_) => f(&mut vec![0f32; len]),
    })
}

/// Below this many elements an element-wise pass is not worth splitting over threads.
const PAR_MIN: usize = 1 << 15;
