//! ReLU with a one-pass masked backward.

use super::{cpu_slice, cpu_tensor, fast_path, with_f32, PAR_MIN};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `max(x, 0)` element-wise (NaN becomes 0, as in candle). The gradient passes where the
/// output is positive, as in PyTorch (zero at exactly zero).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !fast_path(x) {
        return x.relu();
    }
    x.contiguous()?.apply_op1(Relu)
}

#[inline(never)]
fn relu_slice(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x.max(0.0);
    }
}

/// `dx = dy` where `y > 0`, else 0.
#[inline(never)]
fn relu_grad_slice(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((d, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
        // A bit mask rather than a select, which the compiler may turn into a branch that
        // random activation signs mispredict.
        *d = f32::from_bits(g.to_bits() & ((y > 0.0) as u32).wrapping_neg());
    }
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "transferlab-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(storage, layout, "relu")?;
        let mut y = vec![0f32; x.len()];
        let pass = |(y, x): (&mut [f32], &[f32])| relu_slice(x, y);
        if x.len() < PAR_MIN {
            pass((&mut y, x));
        } else {
            y.par_chunks_mut(PAR_MIN).zip(x.par_chunks(PAR_MIN)).for_each(pass);
        }
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(relu_grad(y, dy)?))
    }
}

/// `dy` where `y > 0`, else 0: ReLU's backward pass given its output, also used by the ops
/// that fuse a ReLU into their output.
pub(super) fn relu_grad(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let dx = with_f32(y, "relu backward", |ys| with_f32(dy, "relu backward", |dys| relu_grad_vec(ys, dys)))??;
    cpu_tensor(dx, y.dims())
}

/// [`relu_grad`] on slices.
pub(super) fn relu_grad_vec(ys: &[f32], dys: &[f32]) -> Vec<f32> {
    let mut dx = vec![0f32; ys.len()];
    let pass = |((dx, y), dy): ((&mut [f32], &[f32]), &[f32])| relu_grad_slice(y, dy, dx);
    if ys.len() < PAR_MIN {
        pass(((&mut dx, ys), dys));
    } else {
        dx.par_chunks_mut(PAR_MIN).zip(ys.par_chunks(PAR_MIN)).zip(dys.par_chunks(PAR_MIN)).for_each(pass);
    }
    dx
}

/// [`relu_grad_vec`] in place: `d` where `y > 0`, else 0.
pub(super) fn relu_mask_in_place(ys: &[f32], d: &mut [f32]) {
    let pass = |(d, y): (&mut [f32], &[f32])| {
        for (d, &y) in d.iter_mut().zip(y) {
            *d = f32::from_bits(d.to_bits() & ((y > 0.0) as u32).wrapping_neg());
        }
    };
    if ys.len() < PAR_MIN {
        pass((d, ys));
    } else {
        d.par_chunks_mut(PAR_MIN).zip(ys.par_chunks(PAR_MIN)).for_each(pass);
    }
}

/// `relu(a + b)` for tensors of the same shape, as one op: the residual connection of a
/// ResNet block. The gradient, `dy` where the output is positive, goes to both inputs.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        candle_core::bail!("add_relu: shapes {:?} and {:?} differ", a.dims(), b.dims())
    }
    if !(fast_path(a) && fast_path(b)) {
        return (a + b)?.relu();
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "transferlab-add-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let a = cpu_slice(s1, l1, "add_relu")?;
        let b = cpu_slice(s2, l2, "add_relu")?;
        let mut y = vec![0f32; a.len()];
        let pass = |((y, a), b): ((&mut [f32], &[f32]), &[f32])| {
            for ((o, &u), &v) in y.iter_mut().zip(a).zip(b) {
                *o = (u + v).max(0.0);
            }
        };
        if a.len() < PAR_MIN {
            pass(((&mut y, a), b));
        } else {
            y.par_chunks_mut(PAR_MIN).zip(a.par_chunks(PAR_MIN)).zip(b.par_chunks(PAR_MIN)).for_each(pass);
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = relu_grad(y, dy)?;
        Ok((a.track_op().then(|| g.clone()), b.track_op().then_some(g)))
    }
}
