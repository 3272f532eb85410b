//! `kernels::conv2d_batch_norm_train` (conv -> batch norm -> residual add -> ReLU as one op)
//! against candle's own ops (values and gradients, 1e-4 relative) and bit for bit against the
//! separate kernels it replaces.

use candle_core::{DType, Device, Tensor, Var};
use transferlab::kernels::{self, ConvBn};
use transferlab::rng::{normal, stream_at};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = stream_at(seed, "tests.kernels_conv_bn", shape.iter().product::<usize>() as u64);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| normal(&mut rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

/// Element-wise relative tolerance 1e-4, magnitudes floored at the tensor's RMS (values near
/// zero by cancellation are judged on the tensor's own scale).
fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (values(got), values(want));
    let rms = (w.iter().map(|v| (v * v) as f64).sum::<f64>() / w.len().max(1) as f64).sqrt() as f32;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let tol = 1e-4 * b.abs().max(rms).max(1e-30);
        assert!((a - b).abs() <= tol, "{what}: element {i}: got {a}, want {b} (tol {tol})");
    }
}

/// Output and gradients of `sum(f(inputs) * r)` for a fixed random `r`.
fn grads_of(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor, seed: u64) -> (Tensor, Vec<Option<Tensor>>) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts);
    let r = randn(out.dims(), seed ^ 0x5eed);
    let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
    (out, ts.iter().map(|t| grads.get(t).cloned()).collect())
}

/// candle's conv2d and batch norm written out with its generic ops.
fn reference(t: &[Tensor], spec: ConvBn) -> Tensor {
    let z = t[0].conv2d(&t[1], spec.padding, spec.stride, 1, 1).unwrap();
    let c = z.dim(1).unwrap();
    let mean = z.mean_keepdim((0, 2, 3)).unwrap();
    let centred = z.broadcast_sub(&mean).unwrap();
    let var = centred.sqr().unwrap().mean_keepdim((0, 2, 3)).unwrap();
    let mut y = centred
        .broadcast_div(&(var + spec.eps).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(&t[2].reshape((1, c, 1, 1)).unwrap())
        .unwrap()
        .broadcast_add(&t[3].reshape((1, c, 1, 1)).unwrap())
        .unwrap();
    if let Some(r) = t.get(4) {
        y = (y + r).unwrap();
    }
    if spec.relu {
        y = y.relu().unwrap();
    }
    y
}

/// The separate kernels the fused op replaces, as a ResNet block used them.
fn separate(t: &[Tensor], spec: ConvBn) -> Tensor {
    let z = kernels::conv2d(&t[0], &t[1], None, spec.stride, spec.padding).unwrap();
    match t.get(4) {
        None if spec.relu => kernels::batch_norm_train_relu(&z, &t[2], &t[3], spec.eps).unwrap().output,
        None => kernels::batch_norm_train(&z, &t[2], &t[3], spec.eps).unwrap().output,
        Some(r) => {
            let y = kernels::batch_norm_train(&z, &t[2], &t[3], spec.eps).unwrap().output;
            if spec.relu {
                kernels::add_relu(&y, r).unwrap()
            } else {
                (y + r).unwrap()
            }
        }
    }
}

fn fused(t: &[Tensor], spec: ConvBn) -> Tensor {
    kernels::conv2d_batch_norm_train(&t[0], &t[1], &t[2], &t[3], t.get(4), spec).unwrap().output
}

/// (N, C_in, H, W, C_out, kernel, stride, padding): odd sizes, strides, no padding, 1x1.
const CASES: [(usize, usize, usize, usize, usize, usize, usize, usize); 6] = [
    (4, 3, 7, 9, 5, 3, 1, 1),
    (3, 2, 8, 8, 4, 3, 2, 1),
    (5, 4, 6, 5, 3, 1, 1, 0),
    (2, 3, 9, 7, 6, 5, 2, 2),
    (7, 1, 5, 5, 2, 3, 1, 0),
    (37, 16, 8, 8, 16, 3, 1, 1),
];

fn inputs(case: usize, residual: bool) -> (Vec<Tensor>, ConvBn) {
    let (n, cin, h, w, cout, k, s, p) = CASES[case];
    let seed = 10 * case as u64;
    let ho = (h + 2 * p - k) / s + 1;
    let wo = (w + 2 * p - k) / s + 1;
    // An offset input makes the batch mean non-zero, so the variance's two passes matter.
    let mut t = vec![
        randn(&[n, cin, h, w], seed).affine(1.0, 0.5).unwrap(),
        (randn(&[cout, cin, k, k], seed + 1) * 0.3).unwrap(),
        randn(&[cout], seed + 2).affine(0.5, 1.0).unwrap(),
        randn(&[cout], seed + 3),
    ];
    if residual {
        t.push(randn(&[n, cout, ho, wo], seed + 4));
    }
    (t, ConvBn { stride: s, padding: p, eps: 1e-5, relu: true })
}

#[test]
fn matches_candle_ops_in_values_and_gradients() {
    for case in 0..CASES.len() {
        for residual in [false, true] {
            for relu in [true, false] {
                let (t, mut spec) = inputs(case, residual);
                spec.relu = relu;
                let what = format!("case {case} residual {residual} relu {relu}");
                let (y1, g1) = grads_of(&t, &move |t| fused(t, spec), case as u64);
                let (y2, g2) = grads_of(&t, &move |t| reference(t, spec), case as u64);
                assert_close(&y1, &y2, &format!("{what}: value"));
                for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
                    assert_close(a.as_ref().expect("gradient"), b.as_ref().expect("gradient"), &format!("{what}: gradient {i}"));
                }
            }
        }
    }
}

#[test]
fn is_bit_identical_to_the_separate_kernels() {
    for case in 0..CASES.len() {
        for residual in [false, true] {
            for relu in [true, false] {
                let (t, mut spec) = inputs(case, residual);
                spec.relu = relu;
                let what = format!("case {case} residual {residual} relu {relu}");
                let (y1, g1) = grads_of(&t, &move |t| fused(t, spec), 7);
                let (y2, g2) = grads_of(&t, &move |t| separate(t, spec), 7);
                assert_eq!(values(&y1), values(&y2), "{what}: value");
                for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
                    assert_eq!(values(a.as_ref().unwrap()), values(b.as_ref().unwrap()), "{what}: gradient {i}");
                }
                let (x, w, gamma, beta) = (&t[0], &t[1], &t[2], &t[3]);
                let a = kernels::conv2d_batch_norm_train(x, w, gamma, beta, t.get(4), spec).unwrap();
                let z = kernels::conv2d(x, w, None, spec.stride, spec.padding).unwrap();
                let b = kernels::batch_norm_train(&z, gamma, beta, spec.eps).unwrap();
                assert_eq!(values(&a.mean), values(&b.mean), "{what}: batch mean");
                assert_eq!(values(&a.var), values(&b.var), "{what}: batch variance");
                assert_eq!(a.count, b.count);
            }
        }
    }
}

#[test]
fn a_shared_input_collects_both_gradients() {
    // The identity shortcut of a ResNet block: the block input is both convolved and added.
    let (t, spec) = inputs(5, false);
    let w2 = randn(&[16, 16, 3, 3], 99);
    let block = |t: &[Tensor], f: &dyn Fn(&[Tensor], ConvBn) -> Tensor| {
        let h = f(&t[..4], spec);
        f(&[h, t[4].clone(), t[2].clone(), t[3].clone(), t[0].clone()], spec)
    };
    let mut t5 = t.clone();
    t5.push((w2 * 0.1).unwrap());
    let (y1, g1) = grads_of(&t5, &|t| block(t, &fused), 3);
    let (y2, g2) = grads_of(&t5, &|t| block(t, &separate), 3);
    assert_eq!(values(&y1), values(&y2));
    for (a, b) in g1.iter().zip(&g2) {
        assert_eq!(values(a.as_ref().unwrap()), values(b.as_ref().unwrap()));
    }
}

#[test]
fn frozen_parameters_get_no_gradient_and_the_input_still_does() {
    let (t, spec) = inputs(0, true);
    let x = Var::from_tensor(&t[0]).unwrap();
    let out = kernels::conv2d_batch_norm_train(x.as_tensor(), &t[1], &t[2], &t[3], Some(&t[4]), spec).unwrap();
    let grads = out.output.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&t[1]).is_none());
    let want = grads_of(&t, &move |t| fused(t, spec), 0).1;
    assert!(grads.get(x.as_tensor()).is_some());
    assert_eq!(grads.get(x.as_tensor()).unwrap().dims(), want[0].as_ref().unwrap().dims());
}

#[test]
fn other_dtypes_fall_back_to_the_separate_ops() {
    let (t, spec) = inputs(1, true);
    let t64: Vec<Tensor> = t.iter().map(|t| t.to_dtype(DType::F64).unwrap()).collect();
    let y = fused(&t64, spec);
    assert_eq!(y.dtype(), DType::F64);
    assert_close(&y, &fused(&t, spec), "f64 fallback");
}

#[test]
fn rejects_mismatched_shapes() {
    let (t, spec) = inputs(0, true);
    let bad_r = randn(&[4, 5, 7, 8], 1);
    assert!(kernels::conv2d_batch_norm_train(&t[0], &t[1], &t[2], &t[3], Some(&bad_r), spec).is_err());
    assert!(kernels::conv2d_batch_norm_train(&t[0], &t[1], &randn(&[4], 1), &t[3], None, spec).is_err());
    assert!(kernels::conv2d_batch_norm_train(&t[0], &randn(&[5, 2, 3, 3], 1), &t[2], &t[3], None, spec).is_err());
    assert!(kernels::conv2d_batch_norm_train(&t[0], &t[1], &t[2], &t[3], None, ConvBn { stride: 0, ..spec }).is_err());
}
