//! The CPU kernels against candle's own ops: values and gradients, odd shapes, strides and
//! padding, determinism, and the fallback path.

use candle_core::{DType, Device, Tensor, Var};
use transferlab::kernels;

use crate::common;
use common::{assert_close, values};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    common::randn_in("tests.kernels", shape, seed)
}

/// Gradients of `sum(f(inputs) * r)` for a fixed random `r`, so that every output position
/// carries a different weight.
fn grads_of(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor, seed: u64) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts);
    let r = randn(out.dims(), seed ^ 0x5eed);
    let loss = (&out * &r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = ts.iter().map(|t| grads.get(t).expect("gradient").clone()).collect();
    (out, g)
}

fn check_op(name: &str, inputs: &[Tensor], ours: impl Fn(&[Tensor]) -> Tensor, reference: impl Fn(&[Tensor]) -> Tensor, seed: u64) {
    let (y1, g1) = grads_of(inputs, ours, seed);
    let (y2, g2) = grads_of(inputs, reference, seed);
    assert_close(&y1, &y2, &format!("{name} value"));
    for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
        assert_close(a, b, &format!("{name} gradient {i}"));
    }
}

fn conv_reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, pad: usize) -> Tensor {
    let y = x.conv2d(w, pad, stride, 1, 1).unwrap();
    match b {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1)).unwrap()).unwrap(),
        None => y,
    }
}

/// Convolution and its three gradients (for output gradient `r`) written out loop by loop in
/// f64: the reference where candle's own backward fails (stride 2 when the last window does
/// not end on the input's edge, where its conv_transpose2d gets the size wrong).
fn conv_naive(x: &Tensor, w: &Tensor, b: Option<&Tensor>, s: usize, p: usize, r: &Tensor) -> [Tensor; 4] {
    let (n, ci, h, wd) = x.dims4().unwrap();
    let (co, _, k, _) = w.dims4().unwrap();
    let (ho, wo) = ((h + 2 * p - k) / s + 1, (wd + 2 * p - k) / s + 1);
    let (xv, wv, rv) = (values(x), values(w), values(r));
    let bv = b.map(values).unwrap_or_else(|| vec![0.0; co]);
    let mut y = vec![0f64; n * co * ho * wo];
    let (mut dx, mut dw, mut db) = (vec![0f64; xv.len()], vec![0f64; wv.len()], vec![0f64; co]);
    for b_ in 0..n {
        for o in 0..co {
            for oh in 0..ho {
                for ow in 0..wo {
                    let yi = ((b_ * co + o) * ho + oh) * wo + ow;
                    let g = rv[yi] as f64;
                    let mut acc = bv[o] as f64;
                    db[o] += g;
                    for c in 0..ci {
                        for ki in 0..k {
                            for kj in 0..k {
                                let (ih, iw) = ((oh * s + ki) as isize - p as isize, (ow * s + kj) as isize - p as isize);
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= wd as isize {
                                    continue;
                                }
                                let xi = ((b_ * ci + c) * h + ih as usize) * wd + iw as usize;
                                let wi = ((o * ci + c) * k + ki) * k + kj;
                                acc += xv[xi] as f64 * wv[wi] as f64;
                                dx[xi] += g * wv[wi] as f64;
                                dw[wi] += g * xv[xi] as f64;
                            }
                        }
                    }
                    y[yi] = acc;
                }
            }
        }
    }
    let t = |v: Vec<f64>, shape: &[usize]| Tensor::from_vec(v.into_iter().map(|a| a as f32).collect::<Vec<f32>>(), shape, &Device::Cpu).unwrap();
    [t(y, &[n, co, ho, wo]), t(dx, x.dims()), t(dw, w.dims()), t(db, &[co])]
}

#[test]
fn conv2d_matches_reference_values_and_gradients() {
    // (n, c_in, h, w, c_out, k, stride, padding, bias)
    let cases = [
        (1, 3, 8, 8, 4, 3, 1, 1, true),
        (5, 3, 9, 7, 6, 3, 1, 1, true),
        (5, 4, 11, 10, 3, 3, 2, 1, false),
        (2, 2, 9, 13, 5, 5, 2, 0, true),
        (1, 3, 12, 9, 4, 7, 2, 3, true),
        (5, 6, 7, 7, 8, 1, 1, 0, true),
        (3, 5, 9, 8, 4, 1, 2, 0, false),
        (2, 3, 6, 5, 2, 7, 1, 3, false),
        (5, 8, 16, 16, 16, 3, 1, 1, true),
        (1, 2, 4, 4, 3, 3, 2, 3, true),
        (5, 4, 9, 9, 6, 3, 2, 1, true),
        (40, 3, 6, 6, 4, 3, 1, 0, true),
    ];
    for (i, &(n, ci, h, w, co, k, s, p, bias)) in cases.iter().enumerate() {
        let name = format!("conv2d case {i} {:?}", cases[i]);
        let seed = 100 + i as u64;
        let mut inputs = vec![randn(&[n, ci, h, w], seed), randn(&[co, ci, k, k], seed + 1)];
        if bias {
            inputs.push(randn(&[co], seed + 2));
        }
        let (y, grads) = grads_of(&inputs, |t| kernels::conv2d(&t[0], &t[1], t.get(2), s, p).unwrap(), seed);
        let r = randn(y.dims(), seed ^ 0x5eed);
        let want = conv_naive(&inputs[0], &inputs[1], inputs.get(2), s, p, &r);
        assert_close(&y, &want[0], &format!("{name} value vs loops"));
        assert_close(&y, &conv_reference(&inputs[0], &inputs[1], inputs.get(2), s, p), &format!("{name} value vs candle"));
        for (g, (wg, what)) in grads.iter().zip(want[1..].iter().zip(["input", "weight", "bias"])) {
            assert_close(g, wg, &format!("{name} {what} gradient vs loops"));
        }
        if (h + 2 * p - k) % s == 0 && (w + 2 * p - k) % s == 0 {
            let (_, cg) = grads_of(&inputs, |t| conv_reference(&t[0], &t[1], t.get(2), s, p), seed);
            for (g, c) in grads.iter().zip(&cg) {
                assert_close(g, c, &format!("{name} gradient vs candle"));
            }
        }
    }
}

#[test]
fn conv2d_without_input_gradient_still_gives_weight_gradients() {
    // The first layer's input is data, not a variable: the backward pass skips its gradient.
    let x = randn(&[3, 3, 10, 10], 1);
    let w = Var::from_tensor(&randn(&[4, 3, 3, 3], 2)).unwrap();
    let b = Var::from_tensor(&randn(&[4], 3)).unwrap();
    let r = randn(&[3, 4, 10, 10], 4);
    let ours = (kernels::conv2d(&x, &w, Some(&b), 1, 1).unwrap() * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let refr = (conv_reference(&x, &w, Some(&b), 1, 1) * &r).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(ours.get(&x).is_none());
    assert_close(ours.get(&w).unwrap(), refr.get(&w).unwrap(), "weight gradient");
    assert_close(ours.get(&b).unwrap(), refr.get(&b).unwrap(), "bias gradient");
}

#[test]
fn conv2d_rejects_mismatched_shapes() {
    let x = randn(&[1, 3, 5, 5], 1);
    assert!(kernels::conv2d(&x, &randn(&[4, 2, 3, 3], 2), None, 1, 1).is_err());
    assert!(kernels::conv2d(&x, &randn(&[4, 3, 7, 7], 2), None, 1, 0).is_err());
    assert!(kernels::conv2d(&x, &randn(&[4, 3, 3, 3], 2), Some(&randn(&[3], 3)), 1, 1).is_err());
}

#[test]
fn relu_matches_candle() {
    for (i, shape) in [vec![5, 3, 7, 9], vec![1, 64, 16, 16], vec![4, 13]].into_iter().enumerate() {
        check_op("relu", &[randn(&shape, 10 + i as u64)], |t| kernels::relu(&t[0]).unwrap(), |t| t[0].relu().unwrap(), 7);
    }
}

/// Max pooling by definition: padded positions never win, the first maximum takes the gradient.
fn max_pool_naive(x: &Tensor, k: usize, s: usize, p: usize) -> (Vec<f32>, Vec<usize>, (usize, usize)) {
    let (n, c, h, w) = x.dims4().unwrap();
    let xv = values(x);
    let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let (mut y, mut arg) = (Vec::new(), Vec::new());
    for plane in 0..n * c {
        for oh in 0..ho {
            for ow in 0..wo {
                let mut best = (f32::NEG_INFINITY, usize::MAX);
                for ki in 0..k {
                    for kj in 0..k {
                        let (ih, iw) = ((oh * s + ki) as isize - p as isize, (ow * s + kj) as isize - p as isize);
                        if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                            continue;
                        }
                        let idx = plane * h * w + ih as usize * w + iw as usize;
                        if best.1 == usize::MAX || xv[idx] > best.0 {
                            best = (xv[idx], idx);
                        }
                    }
                }
                y.push(best.0);
                arg.push(best.1);
            }
        }
    }
    (y, arg, (ho, wo))
}

#[test]
fn max_pool2d_values_match_candle() {
    for (i, (shape, k)) in [(vec![5, 3, 8, 8], 2), (vec![1, 4, 9, 7], 2), (vec![5, 2, 10, 11], 3)].into_iter().enumerate() {
        let x = randn(&shape, 20 + i as u64);
        assert_close(&kernels::max_pool2d(&x, k, k, 0).unwrap(), &x.max_pool2d(k).unwrap(), "max_pool2d value");
    }
}

#[test]
fn candle_max_pool_backward_scales_by_one_over_window_area() {
    // Why max pooling's gradients are checked against the definition rather than candle:
    // candle 0.11.1 multiplies each gradient by (number of maxima) / k^2 instead of dividing
    // by the number of maxima. If this starts failing, candle has fixed it.
    let x = Var::from_tensor(&Tensor::arange(0f32, 16.0, &Device::Cpu).unwrap().reshape((1, 1, 4, 4)).unwrap()).unwrap();
    let candle = x.max_pool2d(2).unwrap().sum_all().unwrap().backward().unwrap();
    let ours = kernels::max_pool2d(&x, 2, 2, 0).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(values(candle.get(&x).unwrap())[15], 0.25);
    assert_eq!(values(ours.get(&x).unwrap())[15], 1.0);
}

#[test]
fn max_pool2d_with_stride_and_padding_matches_definition() {
    for (i, &(n, c, h, w, k, s, p)) in [(5, 3, 8, 8, 2, 2, 0), (1, 4, 9, 7, 2, 2, 0), (5, 2, 10, 11, 3, 3, 0), (5, 3, 9, 7, 3, 2, 1), (1, 2, 8, 8, 3, 1, 1), (2, 3, 11, 10, 2, 1, 1), (3, 2, 12, 12, 7, 2, 3), (1, 1, 5, 6, 3, 3, 0)].iter().enumerate() {
        let x = randn(&[n, c, h, w], 30 + i as u64);
        let (want, arg, (ho, wo)) = max_pool_naive(&x, k, s, p);
        let xv = Var::from_tensor(&x).unwrap();
        let y = kernels::max_pool2d(&xv, k, s, p).unwrap();
        assert_eq!(y.dims(), [n, c, ho, wo]);
        assert_eq!(values(&y), want, "values, case {i}");
        let r = randn(y.dims(), 99);
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut want_grad = vec![0f32; x.elem_count()];
        for (o, &a) in arg.iter().enumerate() {
            want_grad[a] += values(&r)[o];
        }
        let want_grad = Tensor::from_vec(want_grad, x.dims(), &Device::Cpu).unwrap();
        assert_close(g.get(&xv).unwrap(), &want_grad, &format!("gradient, case {i}"));
    }
}

#[test]
fn max_pool2d_relu_equals_both_orders_of_the_two_ops() {
    for (i, &(shape, k, s, p)) in [([5, 3, 8, 8], 2, 2, 0), ([2, 4, 9, 7], 3, 2, 1), ([1, 2, 6, 6], 2, 1, 0)].iter().enumerate() {
        let x = randn(&shape, 35 + i as u64);
        check_op(
            "max_pool2d_relu vs relu after pooling",
            std::slice::from_ref(&x),
            |t| kernels::max_pool2d_relu(&t[0], k, s, p).unwrap(),
            |t| kernels::relu(&kernels::max_pool2d(&t[0], k, s, p).unwrap()).unwrap(),
            12,
        );
        check_op(
            "max_pool2d_relu vs relu before pooling",
            std::slice::from_ref(&x),
            |t| kernels::max_pool2d_relu(&t[0], k, s, p).unwrap(),
            |t| kernels::max_pool2d(&kernels::relu(&t[0]).unwrap(), k, s, p).unwrap(),
            13,
        );
        if p == 0 && s == k {
            assert_close(&kernels::max_pool2d_relu(&x, k, s, p).unwrap(), &x.relu().unwrap().max_pool2d(k).unwrap(), "max_pool2d_relu vs candle values");
        }
    }
}

#[test]
fn max_pool2d_rejects_padding_over_half_the_window() {
    assert!(kernels::max_pool2d(&randn(&[1, 1, 8, 8], 1), 2, 2, 2).is_err());
}

#[test]
fn avg_pool2d_matches_candle() {
    // Sizes the window divides: candle's backward upsamples the gradient to the input size,
    // which misplaces it when trailing rows or columns were dropped.
    for (i, (shape, k)) in [(vec![5, 3, 8, 8], 2), (vec![1, 4, 12, 6], 3), (vec![2, 3, 4, 4], 4)].into_iter().enumerate() {
        check_op("avg_pool2d", &[randn(&shape, 40 + i as u64)], |t| kernels::avg_pool2d(&t[0], k).unwrap(), |t| t[0].avg_pool2d(k).unwrap(), 11);
    }
}

#[test]
fn avg_pool2d_drops_trailing_rows_and_columns() {
    // 5x7 with k = 2: outputs cover rows 0..4 and columns 0..6; the rest get no gradient.
    let x = Var::from_tensor(&randn(&[2, 3, 5, 7], 45)).unwrap();
    let y = kernels::avg_pool2d(&x, 2).unwrap();
    assert_close(&y, &x.narrow(2, 0, 4).unwrap().narrow(3, 0, 6).unwrap().avg_pool2d(2).unwrap(), "value");
    let g = y.sum_all().unwrap().backward().unwrap();
    let gv = values(g.get(&x).unwrap());
    for (i, v) in gv.iter().enumerate() {
        let (r, c) = ((i / 7) % 5, i % 7);
        assert_eq!(*v, if r < 4 && c < 6 { 0.25 } else { 0.0 }, "element {i}");
    }
}

fn bn_reference(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> (Tensor, Tensor, Tensor) {
    let c = x.dim(1).unwrap();
    let bshape: Vec<usize> = x.dims().iter().enumerate().map(|(i, &d)| if i == 1 { d } else { 1 }).collect();
    let axes: Vec<usize> = (0..x.rank()).filter(|&a| a != 1).collect();
    let mean = x.mean_keepdim(axes.as_slice()).unwrap();
    let centred = x.broadcast_sub(&mean).unwrap();
    let var = centred.sqr().unwrap().mean_keepdim(axes.as_slice()).unwrap();
    let y = centred
        .broadcast_div(&(&var + eps).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(&w.reshape(bshape.as_slice()).unwrap())
        .unwrap()
        .broadcast_add(&b.reshape(bshape.as_slice()).unwrap())
        .unwrap();
    (y, mean.reshape(c).unwrap(), var.reshape(c).unwrap())
}

#[test]
fn batch_norm_train_matches_reference() {
    for (i, shape) in [vec![5, 3, 7, 9], vec![1, 4, 5, 5], vec![128, 8, 4, 4], vec![6, 5]].into_iter().enumerate() {
        let seed = 50 + i as u64;
        // An offset mean checks that the variance is not taken as E[x^2] - E[x]^2.
        let x = (randn(&shape, seed) * 2.0).unwrap().affine(1.0, 3.0).unwrap();
        let c = shape[1];
        let inputs = [x, randn(&[c], seed + 1), randn(&[c], seed + 2)];
        check_op(
            "batch_norm_train",
            &inputs,
            |t| kernels::batch_norm_train(&t[0], &t[1], &t[2], 1e-5).unwrap().output,
            |t| bn_reference(&t[0], &t[1], &t[2], 1e-5).0,
            seed,
        );
        let ours = kernels::batch_norm_train(&inputs[0], &inputs[1], &inputs[2], 1e-5).unwrap();
        let (_, mean, var) = bn_reference(&inputs[0], &inputs[1], &inputs[2], 1e-5);
        assert_close(&ours.mean, &mean, "batch mean");
        assert_close(&ours.var, &var, "batch variance");
        let m = (ours.count as f64 / (ours.count as f64 - 1.0)) as f32;
        assert_close(&ours.unbiased_var().unwrap(), &(var * m as f64).unwrap(), "unbiased variance");
    }
}

#[test]
fn batch_norm_train_running_stats_match_candle_nn() {
    let x = randn(&[6, 3, 5, 5], 61);
    let cfg = candle_nn::BatchNormConfig { eps: 1e-5, remove_mean: true, affine: true, momentum: 0.1 };
    let vm = candle_nn::VarMap::new();
    let bn = candle_nn::batch_norm(3, cfg, candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let want = bn.forward_train(&x).unwrap();
    let (w, b) = bn.weight_and_bias().unwrap();
    let ours = kernels::batch_norm_train(&x, w, b, 1e-5).unwrap();
    assert_close(&ours.output, &want, "output");
    // candle-nn starts from mean 0, variance 1 with momentum 0.1.
    let rm = (&ours.mean * 0.1).unwrap();
    let rv = (ours.unbiased_var().unwrap() * 0.1).unwrap().affine(1.0, 0.9).unwrap();
    assert_close(&rm, bn.running_mean(), "running mean");
    assert_close(&rv, bn.running_var(), "running variance");
}

#[test]
fn batch_norm_eval_matches_reference() {
    let c = 4;
    let x = randn(&[5, c, 7, 6], 70);
    let rm = randn(&[c], 71);
    let rv = randn(&[c], 72).abs().unwrap().affine(1.0, 0.5).unwrap();
    let inputs = [x, randn(&[c], 73), randn(&[c], 74)];
    check_op(
        "batch_norm_eval",
        &inputs,
        |t| kernels::batch_norm_eval(&t[0], &rm, &rv, &t[1], &t[2], 1e-5).unwrap(),
        |t| {
            let s = (1, c, 1, 1);
            t[0].broadcast_sub(&rm.reshape(s).unwrap())
                .unwrap()
                .broadcast_div(&(&rv + 1e-5).unwrap().sqrt().unwrap().reshape(s).unwrap())
                .unwrap()
                .broadcast_mul(&t[1].reshape(s).unwrap())
                .unwrap()
                .broadcast_add(&t[2].reshape(s).unwrap())
                .unwrap()
        },
        75,
    );
}

#[test]
fn fused_relu_variants_match_the_two_op_forms() {
    let c = 5;
    let x = randn(&[6, c, 7, 5], 76);
    let (w, b) = (randn(&[c], 77), randn(&[c], 78));
    check_op(
        "batch_norm_train_relu",
        &[x.clone(), w.clone(), b.clone()],
        |t| kernels::batch_norm_train_relu(&t[0], &t[1], &t[2], 1e-5).unwrap().output,
        |t| bn_reference(&t[0], &t[1], &t[2], 1e-5).0.relu().unwrap(),
        79,
    );
    let fused = kernels::batch_norm_train_relu(&x, &w, &b, 1e-5).unwrap();
    let plain = kernels::batch_norm_train(&x, &w, &b, 1e-5).unwrap();
    assert_eq!(values(&fused.mean), values(&plain.mean));
    assert_eq!(values(&fused.var), values(&plain.var));
    let rm = randn(&[c], 80);
    let rv = randn(&[c], 81).abs().unwrap().affine(1.0, 0.5).unwrap();
    check_op(
        "batch_norm_eval_relu",
        &[x.clone(), w, b],
        |t| kernels::batch_norm_eval_relu(&t[0], &rm, &rv, &t[1], &t[2], 1e-5).unwrap(),
        |t| kernels::batch_norm_eval(&t[0], &rm, &rv, &t[1], &t[2], 1e-5).unwrap().relu().unwrap(),
        82,
    );
    check_op("add_relu", &[x, randn(&[6, c, 7, 5], 83)], |t| kernels::add_relu(&t[0], &t[1]).unwrap(), |t| (&t[0] + &t[1]).unwrap().relu().unwrap(), 84);
    assert!(kernels::add_relu(&randn(&[2, 3], 1), &randn(&[3, 2], 2)).is_err());
}

fn ce_reference(z: &Tensor, t: &Tensor, eps: f64) -> Tensor {
    let logp = candle_nn::ops::log_softmax(z, 1).unwrap();
    let nll = logp.gather(&t.unsqueeze(1).unwrap(), 1).unwrap().squeeze(1).unwrap().neg().unwrap().mean_all().unwrap();
    let uniform = logp.mean(1).unwrap().neg().unwrap().mean_all().unwrap();
    ((nll * (1.0 - eps)).unwrap() + (uniform * eps).unwrap()).unwrap()
}

#[test]
fn cross_entropy_matches_reference() {
    for (i, &(n, classes, eps)) in [(5, 10, 0.0), (1, 3, 0.0), (128, 10, 0.1), (7, 100, 0.3)].iter().enumerate() {
        let z = (randn(&[n, classes], 80 + i as u64) * 3.0).unwrap();
        let labels: Vec<u32> = (0..n).map(|j| ((j * 7 + i) % classes) as u32).collect();
        for t in [Tensor::new(labels.as_slice(), &Device::Cpu).unwrap(), Tensor::new(labels.as_slice(), &Device::Cpu).unwrap().to_dtype(DType::I64).unwrap()] {
            let zv = Var::from_tensor(&z).unwrap();
            let ours = kernels::cross_entropy(&zv, &t, eps).unwrap();
            let refr = ce_reference(&zv, &t, eps);
            assert_close(&ours, &refr, "loss");
            let go = (&ours * 2.5).unwrap().backward().unwrap();
            let gr = (&refr * 2.5).unwrap().backward().unwrap();
            assert_close(go.get(&zv).unwrap(), gr.get(&zv).unwrap(), "logit gradient");
        }
    }
    let z = randn(&[2, 3], 1);
    assert!(kernels::cross_entropy(&z, &Tensor::new(&[0u32, 3], &Device::Cpu).unwrap(), 0.0).is_err());
}

/// A small network through every op, forward and backward, returning every output bit.
fn everything(batch: usize, seed: u64) -> Vec<u32> {
    let x = Var::from_tensor(&randn(&[batch, 3, 12, 10], seed)).unwrap();
    let w1 = Var::from_tensor(&randn(&[8, 3, 3, 3], seed + 1)).unwrap();
    let b1 = Var::from_tensor(&randn(&[8], seed + 2)).unwrap();
    let g = Var::from_tensor(&randn(&[8], seed + 3)).unwrap();
    let beta = Var::from_tensor(&randn(&[8], seed + 4)).unwrap();
    let w2 = Var::from_tensor(&randn(&[6, 8, 3, 3], seed + 5)).unwrap();
    let h = kernels::conv2d(&x, &w1, Some(&b1), 1, 1).unwrap();
    let a = kernels::batch_norm_train(&h, &g, &beta, 1e-5).unwrap().output;
    let h = kernels::add_relu(&kernels::batch_norm_train_relu(&h, &g, &beta, 1e-5).unwrap().output, &a).unwrap();
    let h = kernels::max_pool2d(&kernels::relu(&h).unwrap(), 2, 2, 0).unwrap();
    let h = kernels::conv2d(&h, &w2, None, 2, 1).unwrap();
    let h = kernels::avg_pool2d(&h, 3).unwrap().flatten_from(1).unwrap();
    let t = Tensor::from_vec((0..batch as u32).map(|i| i % 6).collect::<Vec<_>>(), batch, &Device::Cpu).unwrap();
    let loss = kernels::cross_entropy(&h, &t, 0.0).unwrap();
    let grads = loss.backward().unwrap();
    let mut bits: Vec<u32> = values(&loss).iter().map(|v| v.to_bits()).collect();
    for v in [&x, &w1, &b1, &g, &beta, &w2] {
        bits.extend(values(grads.get(v).unwrap()).iter().map(|v| v.to_bits()));
    }
    bits
}

#[test]
fn results_are_bit_identical_across_runs_and_thread_counts() {
    for batch in [1, 5, 37] {
        let a = everything(batch, 90);
        let b = everything(batch, 90);
        assert_eq!(a, b, "two runs, batch {batch}");
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| everything(batch, 90));
        let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap().install(|| everything(batch, 90));
        assert_eq!(a, one, "default threads vs one, batch {batch}");
        assert_eq!(a, three, "default threads vs three, batch {batch}");
    }
}

#[test]
fn non_f32_tensors_fall_back_to_candle() {
    let x = randn(&[2, 3, 6, 6], 1);
    let w = randn(&[4, 3, 3, 3], 2);
    let b = randn(&[4], 3);
    let (x64, w64, b64) = (x.to_dtype(DType::F64).unwrap(), w.to_dtype(DType::F64).unwrap(), b.to_dtype(DType::F64).unwrap());
    let y = kernels::conv2d(&x64, &w64, Some(&b64), 1, 1).unwrap();
    assert_eq!(y.dtype(), DType::F64);
    assert_close(&y, &kernels::conv2d(&x, &w, Some(&b), 1, 1).unwrap(), "conv2d f64");
    let r = kernels::relu(&x64).unwrap();
    assert_eq!(r.dtype(), DType::F64);
    assert_close(&kernels::max_pool2d(&r, 2, 2, 0).unwrap(), &kernels::max_pool2d(&kernels::relu(&x).unwrap(), 2, 2, 0).unwrap(), "max_pool2d f64");
    assert_close(&kernels::avg_pool2d(&x64, 2).unwrap(), &kernels::avg_pool2d(&x, 2).unwrap(), "avg_pool2d f64");
    let bn64 = kernels::batch_norm_train(&x64, &b64.narrow(0, 0, 3).unwrap(), &b64.narrow(0, 1, 3).unwrap(), 1e-5).unwrap();
    let bn32 = kernels::batch_norm_train(&x, &b.narrow(0, 0, 3).unwrap(), &b.narrow(0, 1, 3).unwrap(), 1e-5).unwrap();
    assert_close(&bn64.output, &bn32.output, "batch_norm_train f64");
    let z = randn(&[4, 5], 4);
    let t = Tensor::new(&[0u32, 4, 2, 1], &Device::Cpu).unwrap();
    assert_close(&kernels::cross_entropy(&z.to_dtype(DType::F64).unwrap(), &t, 0.0).unwrap(), &kernels::cross_entropy(&z, &t, 0.0).unwrap(), "cross_entropy f64");
}

#[test]
fn non_contiguous_inputs_are_accepted() {
    let x = randn(&[3, 2, 6, 6], 5).transpose(2, 3).unwrap();
    assert!(!x.is_contiguous());
    let w = randn(&[4, 2, 3, 3], 6);
    assert_close(&kernels::conv2d(&x, &w, None, 1, 1).unwrap(), &conv_reference(&x, &w, None, 1, 1), "conv2d transposed input");
    assert_close(&kernels::relu(&x).unwrap(), &x.relu().unwrap(), "relu transposed input");
}

