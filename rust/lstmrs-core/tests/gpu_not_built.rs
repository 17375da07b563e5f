//! A build without the `gpu` feature: the stand-in `gpu` module answers every GPU request, through
//! the device seam and directly, with the one "feature not built" error.
#![cfg(not(feature = "gpu"))]

use lstmrs_core::device::{self, Device};
use lstmrs_core::error::GpuFailure;
use lstmrs_core::model::{Activation, InputKind, Model, ModelConfig, Pooling};
use lstmrs_core::{
    gpu, Batch, CellKind, Error, ForwardOptions, Layout, Regularization, RnnConfig, RnnParams,
};

fn assert_not_built<T: std::fmt::Debug>(r: Result<T, Error>) {
    match r {
        Err(Error::Gpu {
            failure: GpuFailure::NotBuilt,
            detail,
        }) => assert!(detail.contains("`gpu` cargo feature"), "{detail}"),
        other => panic!("expected the not-built error, got {other:?}"),
    }
}

#[test]
fn every_gpu_request_is_refused_as_not_built() {
    assert_not_built(gpu::gpu_available());
    assert_not_built(gpu::probe(8, 2, 1));
    assert_not_built(device::check(Device::Gpu, &Regularization::default()));
    assert!(device::check(Device::Cpu, &Regularization::default()).is_ok());

    let cfg = RnnConfig::new(CellKind::Lstm, 2, 3, 1, false, true).unwrap();
    let params = RnnParams::<f32>::init_uniform(cfg, 0);
    let x = vec![0.5f32; 2 * 4 * 2];
    let batch = Batch {
        input: &x,
        layout: Layout::BatchFirst,
        seq_len: 4,
        batch: 2,
        h0: None,
        c0: None,
        lengths: None,
    };
    let opts = ForwardOptions {
        keep_tape: true,
        ..Default::default()
    };
    let reg = Regularization::default();
    assert_not_built(device::forward(
        Device::Gpu,
        params.view(),
        &batch,
        &opts,
        &reg,
    ));
    // The CPU side of the same seam runs and records a CPU tape.
    let out = device::forward(Device::Cpu, params.view(), &batch, &opts, &reg).unwrap();
    assert_eq!(out.output.len(), 2 * 4 * 3);
    assert_eq!(
        out.tape.as_ref().map(|t| (t.seq_len(), t.batch())),
        Some((4, 2))
    );

    let mut model = Model::<f32>::new(
        ModelConfig {
            input: InputKind::Dense { features: 2 },
            rnn: cfg,
            dropout: 0.0,
            regularization: reg,
            pooling: Pooling::Last,
            head_hidden: vec![],
            activation: Activation::Tanh,
            outputs: 1,
        },
        0,
    )
    .unwrap();
    assert_not_built(model.set_device(Device::Gpu));
    assert_eq!(model.device(), Device::Cpu);
}
