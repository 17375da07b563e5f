//! Streaming inference: advance a unidirectional network one time step per call, keeping the
//! state between calls and allocating nothing after construction.
//!
//! Per step and layer: one `[B, I]·[I, GH]` product for the input, one `[B, H]·[H, GH]` product for
//! the recurrence, and one fused gate pass, the same kernels as the full-sequence sweep.

use crate::config::CellKind;
use crate::error::{check_len, Error, Result};
use crate::gates::{self, Active};
use crate::matmul::{a_bt, Mat};
use crate::params::{dir_offsets, RnnWeights};
use crate::scalar::Scalar;

/// The running state of a stream of `B` sequences through a unidirectional network.
#[derive(Debug, Clone)]
pub struct Stepper<T> {
    cell: CellKind,
    layers: usize,
    batch: usize,
    hidden: usize,
    /// `[L, B, H]` hidden and (LSTM) cell states.
    h: Vec<T>,
    c: Vec<T>,
    // Scratch, reused every step.
    x_pre: Vec<T>,
    h_pre: Vec<T>,
    act: Vec<T>,
    aux: Vec<T>,
    h_next: Vec<T>,
    c_next: Vec<T>,
    b_hn: Vec<T>,
}

impl<T: Scalar> Stepper<T> {
    /// A stepper for `batch` streams, starting from zero states.
    pub fn new(weights: RnnWeights<T>, batch: usize) -> Result<Self> {
        let cfg = weights.config();
        if cfg.bidirectional {
            return Err(Error::Value {
                arg: "bidirectional",
                expected: "a unidirectional network (a reverse direction needs the whole sequence)"
                    .into(),
                got: "true".into(),
            });
        }
        if batch == 0 {
            return Err(Error::Value {
                arg: "batch",
                expected: "at least 1".into(),
                got: "0".into(),
            });
        }
        let (l, h, gw, hw) = (
            cfg.num_layers,
            cfg.hidden_size,
            cfg.x_gate_width(),
            cfg.h_gate_width(),
        );
        let lstm = cfg.cell.has_cell_state();
        Ok(Stepper {
            cell: cfg.cell,
            layers: l,
            batch,
            hidden: h,
            h: vec![T::zero(); l * batch * h],
            c: vec![T::zero(); if lstm { l * batch * h } else { 0 }],
            x_pre: vec![T::zero(); batch * gw],
            h_pre: vec![T::zero(); batch * hw],
            act: vec![T::zero(); batch * gw],
            aux: vec![T::zero(); batch * h],
            h_next: vec![T::zero(); batch * h],
            c_next: vec![T::zero(); batch * h],
            b_hn: vec![T::zero(); h],
        })
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// `[L, B, H]`
    pub fn h(&self) -> &[T] {
        &self.h
    }

    /// `[L, B, H]`, empty for a GRU.
    pub fn c(&self) -> &[T] {
        &self.c
    }

    /// Zeroes the states.
    pub fn reset(&mut self) {
        self.h.fill(T::zero());
        self.c.fill(T::zero());
    }

    /// Replaces the states (`[L, B, H]` each; `c` only for a cell with a second state).
    pub fn set_state(&mut self, h: &[T], c: Option<&[T]>) -> Result<()> {
        check_len("h", h.len(), &[self.layers, self.batch, self.hidden])?;
        match (c, self.cell.has_cell_state()) {
            (Some(c), true) => {
                check_len("c", c.len(), &[self.layers, self.batch, self.hidden])?;
                self.c.copy_from_slice(c);
            }
            (None, true) => self.c.fill(T::zero()),
            (Some(_), false) => {
                return Err(Error::Value {
                    arg: "c",
                    expected: format!("no cell state for a {} cell", self.cell.name()),
                    got: "a cell state".into(),
                })
            }
            (None, false) => {}
        }
        self.h.copy_from_slice(h);
        Ok(())
    }

    /// Advances every stream by one step: `x[B, I]` in, the top layer's new hidden state
    /// `[B, H]` written to `out`. `weights` must be the network the stepper was built for.
    pub fn step(&mut self, weights: RnnWeights<T>, x: &[T], out: &mut [T]) -> Result<()> {
        let cfg = *weights.config();
        if cfg.num_layers != self.layers
            || cfg.hidden_size != self.hidden
            || cfg.cell != self.cell
            || cfg.bidirectional
        {
            return Err(Error::Value {
                arg: "weights",
                expected: "the network this stepper was built for".into(),
                got: format!("{cfg:?}"),
            });
        }
        let (b, h, gw, hw) = (
            self.batch,
            self.hidden,
            cfg.x_gate_width(),
            cfg.h_gate_width(),
        );
        let custom = self.cell.compiled();
        check_len("x", x.len(), &[b, cfg.input_size])?;
        check_len("out", out.len(), &[b, h])?;
        let data = weights.as_slice();
        let bh = b * h;
        let all = Active {
            lengths: None,
            t: 0,
        };
        for layer in 0..self.layers {
            let o = dir_offsets(&cfg, layer, 0);
            let inp = cfg.layer_input_size(layer);
            let w_ih = &data[o.w_ih..][..gw * inp];
            let w_hh = &data[o.w_hh..][..hw * h];
            let input: &[T] = if layer == 0 {
                x
            } else {
                &self.h[(layer - 1) * bh..layer * bh]
            };
            match o.bias {
                // A custom cell keeps `b_hh` on the recurrent side, where its `hg` leaves read it.
                Some((bi, bhh)) if custom.is_some() => {
                    for row in self.x_pre.chunks_exact_mut(gw) {
                        row.copy_from_slice(&data[bi..][..gw]);
                    }
                    if hw > 0 {
                        for row in self.h_pre.chunks_exact_mut(hw) {
                            row.copy_from_slice(&data[bhh..][..hw]);
                        }
                    }
                }
                Some((bi, bhh)) => {
                    let (b_ih, b_hh) = (&data[bi..][..gw], &data[bhh..][..gw]);
                    let folded = if self.cell == CellKind::Lstm {
                        gw
                    } else {
                        2 * h
                    };
                    for row in self.x_pre.chunks_exact_mut(gw) {
                        row.copy_from_slice(b_ih);
                        row[..folded]
                            .iter_mut()
                            .zip(b_hh)
                            .for_each(|(r, &v)| *r += v);
                    }
                    if self.cell == CellKind::Gru {
                        self.b_hn.copy_from_slice(&b_hh[2 * h..]);
                    }
                }
                None => {
                    self.x_pre.fill(T::zero());
                    self.h_pre.fill(T::zero());
                }
            }
            a_bt(
                &mut self.x_pre,
                gw,
                true,
                Mat::new(input, b, inp),
                Mat::new(w_ih, gw, inp),
            );
            let h_prev = &self.h[layer * bh..(layer + 1) * bh];
            if let Some(cell) = custom {
                if hw > 0 {
                    a_bt(
                        &mut self.h_pre,
                        hw,
                        true,
                        Mat::new(h_prev, b, h),
                        Mat::new(w_hh, hw, h),
                    );
                }
                let units = &data[o.units..][..cfg.unit_width()];
                let rows = layer * bh..(layer + 1) * bh;
                if self.cell.has_cell_state() {
                    cell.forward_step(
                        h,
                        all,
                        &self.x_pre,
                        &self.h_pre,
                        units,
                        &[h_prev, &self.c[rows.clone()]],
                        &mut [&mut self.h_next, &mut self.c_next],
                        &mut [],
                    );
                    self.c[rows].copy_from_slice(&self.c_next);
                } else {
                    cell.forward_step(
                        h,
                        all,
                        &self.x_pre,
                        &self.h_pre,
                        units,
                        &[h_prev],
                        &mut [&mut self.h_next],
                        &mut [],
                    );
                }
                self.h[layer * bh..(layer + 1) * bh].copy_from_slice(&self.h_next);
                continue;
            }
            a_bt(
                &mut self.h_pre,
                gw,
                false,
                Mat::new(h_prev, b, h),
                Mat::new(w_hh, gw, h),
            );
            match self.cell {
                CellKind::Lstm => {
                    let c_prev = &self.c[layer * bh..(layer + 1) * bh];
                    gates::lstm_forward(
                        h,
                        all,
                        &self.x_pre,
                        &self.h_pre,
                        c_prev,
                        h_prev,
                        &mut self.act,
                        &mut self.aux,
                        &mut self.c_next,
                        &mut self.h_next,
                    );
                    self.c[layer * bh..(layer + 1) * bh].copy_from_slice(&self.c_next);
                }
                CellKind::Gru => gates::gru_forward(
                    h,
                    all,
                    &self.x_pre,
                    &self.h_pre,
                    &self.b_hn,
                    h_prev,
                    &mut self.act,
                    &mut self.aux,
                    &mut self.h_next,
                ),
                CellKind::Custom(_) => unreachable!("custom cells step above"),
            }
            self.h[layer * bh..(layer + 1) * bh].copy_from_slice(&self.h_next);
        }
        out.copy_from_slice(&self.h[(self.layers - 1) * bh..]);
        Ok(())
    }
}
