//! `kernels::conv2d_batch_norm_train` (conv -> batch norm -> residual add -> ReLU as one op)
//! against candle's own ops (values and gradients, 1e-4 relative) and bit for bit against the
//! separate kernels it replaces.

use candle_core::{DType, Tensor, Var};
use transferlab::kernels::{self, ConvBn};
use transferlab::models::layers::subsample2d;

use crate::common;
use common::{assert_close, values};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    common::randn_in("tests.kernels_conv_bn", shape, seed)
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

/// Every case of `CASES`, with and without a residual input and a ReLU: `f(inputs, spec, case,
/// description)`.
fn each_variant(prefix: &str, mut f: impl FnMut(Vec<Tensor>, ConvBn, usize, &str)) {
    for case in 0..CASES.len() {
        for residual in [false, true] {
            for relu in [true, false] {
                let (t, mut spec) = inputs(case, residual);
                spec.relu = relu;
                f(t, spec, case, &format!("{prefix}case {case} residual {residual} relu {relu}"));
            }
        }
    }
}

#[test]
fn matches_candle_ops_in_values_and_gradients() {
    each_variant("", |t, spec, case, what| {
        let (y1, g1) = grads_of(&t, &move |t| fused(t, spec), case as u64);
        let (y2, g2) = grads_of(&t, &move |t| reference(t, spec), case as u64);
        assert_close(&y1, &y2, &format!("{what}: value"));
        for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
            assert_close(a.as_ref().expect("gradient"), b.as_ref().expect("gradient"), &format!("{what}: gradient {i}"));
        }
    });
}

#[test]
fn is_bit_identical_to_the_separate_kernels() {
    each_variant("", |t, spec, _, what| {
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
    });
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

/// The block built from single-layer steps (`layer`: the separate kernels or candle's ops):
/// conv -> BN -> ReLU, conv -> BN -> + shortcut -> ReLU.
fn block_from(t: &[Tensor], stride: usize, shortcut: kernels::Shortcut, layer: fn(&[Tensor], ConvBn) -> Tensor) -> Tensor {
    let s1 = ConvBn { stride, padding: 1, eps: 1e-5, relu: true };
    let h = layer(&t[..4], s1);
    let r = match shortcut {
        kernels::Shortcut::Identity => t[0].clone(),
        kernels::Shortcut::SubsamplePad(pad) => subsample2d(&t[0], 2).unwrap().pad_with_zeros(1, pad, pad).unwrap(),
    };
    layer(&[h, t[4].clone(), t[5].clone(), t[6].clone(), r], ConvBn { stride: 1, ..s1 })
}

fn block_fused(t: &[Tensor], stride: usize, shortcut: kernels::Shortcut) -> Tensor {
    let p = kernels::BlockParams { conv1: &t[1], gamma1: &t[2], beta1: &t[3], conv2: &t[4], gamma2: &t[5], beta2: &t[6] };
    kernels::basic_block_train(&t[0], p, kernels::BasicBlock { stride, shortcut, eps: 1e-5 }).unwrap().output
}

/// (N, C_in, H, W, C_out, stride, shortcut): identity and option A, odd sizes. (Not a stride-2
/// width whose last column no output reads, such as 6: candle 0.11's own conv2d backward,
/// the reference here, returns a gradient one column short for it.)
fn block_cases() -> Vec<(usize, usize, usize, usize, usize, usize, kernels::Shortcut)> {
    use kernels::Shortcut::*;
    vec![(3, 4, 7, 5, 4, 1, Identity), (5, 4, 7, 9, 8, 2, SubsamplePad(2)), (2, 2, 8, 8, 4, 2, SubsamplePad(1)), (17, 16, 8, 8, 16, 1, Identity), (4, 3, 5, 7, 5, 2, SubsamplePad(1))]
}

fn block_inputs(case: usize) -> (Vec<Tensor>, usize, kernels::Shortcut) {
    let (n, cin, h, w, cout, stride, shortcut) = block_cases()[case];
    let seed = 300 + 10 * case as u64;
    let t = vec![
        randn(&[n, cin, h, w], seed).affine(1.0, 0.3).unwrap(),
        (randn(&[cout, cin, 3, 3], seed + 1) * 0.3).unwrap(),
        randn(&[cout], seed + 2).affine(0.5, 1.0).unwrap(),
        randn(&[cout], seed + 3),
        (randn(&[cout, cout, 3, 3], seed + 4) * 0.2).unwrap(),
        randn(&[cout], seed + 5).affine(0.5, 1.0).unwrap(),
        randn(&[cout], seed + 6),
    ];
    (t, stride, shortcut)
}

#[test]
fn basic_block_matches_candle_ops_and_the_separate_kernels_bit_for_bit() {
    for case in 0..block_cases().len() {
        let (t, stride, sc) = block_inputs(case);
        let (y1, g1) = grads_of(&t, &|t| block_fused(t, stride, sc), 11);
        let (y2, g2) = grads_of(&t, &|t| block_from(t, stride, sc, reference), 11);
        let (y3, g3) = grads_of(&t, &|t| block_from(t, stride, sc, separate), 11);
        assert_close(&y1, &y2, &format!("block {case}: value"));
        assert_eq!(values(&y1), values(&y3), "block {case}: value vs separate kernels");
        for (i, ((a, b), c)) in g1.iter().zip(&g2).zip(&g3).enumerate() {
            let a = a.as_ref().expect("gradient");
            assert_close(a, b.as_ref().unwrap(), &format!("block {case}: gradient {i}"));
            assert_eq!(values(a), values(c.as_ref().unwrap()), "block {case}: gradient {i} vs separate kernels");
        }
        let p = kernels::BlockParams { conv1: &t[1], gamma1: &t[2], beta1: &t[3], conv2: &t[4], gamma2: &t[5], beta2: &t[6] };
        let out = kernels::basic_block_train(&t[0], p, kernels::BasicBlock { stride, shortcut: sc, eps: 1e-5 }).unwrap();
        let a = kernels::conv2d_batch_norm_train(&t[0], &t[1], &t[2], &t[3], None, ConvBn { stride, padding: 1, eps: 1e-5, relu: true }).unwrap();
        assert_eq!(values(&out.bn[0].mean), values(&a.mean), "block {case}: bn1 mean");
        assert_eq!(values(&out.bn[0].var), values(&a.var), "block {case}: bn1 var");
        let z2 = kernels::conv2d(&a.output, &t[4], None, 1, 1).unwrap();
        let b = kernels::batch_norm_train(&z2, &t[5], &t[6], 1e-5).unwrap();
        assert_eq!(values(&out.bn[1].mean), values(&b.mean), "block {case}: bn2 mean");
        assert_eq!(values(&out.bn[1].var), values(&b.var), "block {case}: bn2 var");
        assert_eq!(out.bn[1].count, b.count);
    }
}

#[test]
fn basic_block_is_deterministic_across_thread_counts() {
    let (t, stride, sc) = block_inputs(1);
    let run = || {
        let (y, g) = grads_of(&t, &|t| block_fused(t, stride, sc), 5);
        let mut v = values(&y);
        g.iter().for_each(|g| v.extend(values(g.as_ref().unwrap())));
        v.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
    };
    let a = run();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(run);
    let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap().install(run);
    assert_eq!(a, one);
    assert_eq!(a, three);
}

#[test]
fn basic_block_falls_back_and_rejects_bad_shapes() {
    let (t, stride, sc) = block_inputs(1);
    let t64: Vec<Tensor> = t.iter().map(|t| t.to_dtype(DType::F64).unwrap()).collect();
    let y = block_fused(&t64, stride, sc);
    assert_eq!(y.dtype(), DType::F64);
    assert_close(&y, &block_fused(&t, stride, sc), "f64 fallback");
    let p = kernels::BlockParams { conv1: &t[1], gamma1: &t[2], beta1: &t[3], conv2: &t[4], gamma2: &t[5], beta2: &t[6] };
    let spec = kernels::BasicBlock { stride, shortcut: sc, eps: 1e-5 };
    // Option A with the wrong padding, an identity shortcut across a channel change, a
    // stride-1 option A block, a mismatched second convolution.
    assert!(kernels::basic_block_train(&t[0], p, kernels::BasicBlock { shortcut: kernels::Shortcut::SubsamplePad(1), ..spec }).is_err());
    assert!(kernels::basic_block_train(&t[0], p, kernels::BasicBlock { shortcut: kernels::Shortcut::Identity, ..spec }).is_err());
    assert!(kernels::basic_block_train(&t[0], p, kernels::BasicBlock { stride: 1, ..spec }).is_err());
    assert!(kernels::basic_block_train(&t[0], kernels::BlockParams { conv2: &t[1], ..p }, spec).is_err());
    assert!(kernels::basic_block_train(&t[0], p, kernels::BasicBlock { stride: 0, ..spec }).is_err());
}

#[test]
fn conv2d_affine_matches_candle_ops_and_the_separate_kernels_bit_for_bit() {
    each_variant("affine ", |t, spec, _, what| {
        let fused = move |t: &[Tensor]| kernels::conv2d_affine(&t[0], &t[1], &t[2], &t[3], t.get(4), spec).unwrap();
        let separate = move |t: &[Tensor]| {
            let z = kernels::conv2d(&t[0], &t[1], None, spec.stride, spec.padding).unwrap();
            let y = kernels::channel_affine(&z, &t[2], &t[3]).unwrap();
            match (t.get(4), spec.relu) {
                (None, false) => y,
                (None, true) => kernels::relu(&y).unwrap(),
                (Some(r), false) => (y + r).unwrap(),
                (Some(r), true) => kernels::add_relu(&y, r).unwrap(),
            }
        };
        let reference = move |t: &[Tensor]| {
            let c = t[2].dim(0).unwrap();
            let z = t[0].conv2d(&t[1], spec.padding, spec.stride, 1, 1).unwrap();
            let mut y = z.broadcast_mul(&t[2].reshape((1, c, 1, 1)).unwrap()).unwrap().broadcast_add(&t[3].reshape((1, c, 1, 1)).unwrap()).unwrap();
            if let Some(r) = t.get(4) {
                y = (y + r).unwrap();
            }
            if spec.relu {
                y = y.relu().unwrap();
            }
            y
        };
        let (y1, g1) = grads_of(&t, &fused, 21);
        let (y2, g2) = grads_of(&t, &separate, 21);
        let (y3, g3) = grads_of(&t, &reference, 21);
        assert_eq!(values(&y1), values(&y2), "{what}: value vs separate kernels");
        assert_close(&y1, &y3, &format!("{what}: value"));
        for (i, ((a, b), c)) in g1.iter().zip(&g2).zip(&g3).enumerate() {
            let a = a.as_ref().expect("gradient");
            assert_eq!(values(a), values(b.as_ref().unwrap()), "{what}: gradient {i} vs separate kernels");
            assert_close(a, c.as_ref().unwrap(), &format!("{what}: gradient {i}"));
        }
    });
    let (t, spec) = inputs(0, false);
    assert!(kernels::conv2d_affine(&t[0], &t[1], &randn(&[4], 1), &t[3], None, spec).is_err());
}
