//! What a recurrent network is: its cell, sizes, depth and directions.

use crate::error::{Error, Result};

/// The recurrent cell, with PyTorch's gate order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CellKind {
    /// Gates i, f, g, o; `c' = f*c + i*g`, `h' = o*tanh(c')`.
    Lstm,
    /// Gates r, z, n; `n = tanh(W_in x + b_in + r*(W_hn h + b_hn))`, `h' = (1-z)*n + z*h`.
    Gru,
}

impl CellKind {
    /// Gate pre-activations per hidden unit (the `G` in `[G*H, I]` weight shapes).
    pub fn gate_count(self) -> usize {
        match self {
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }

    /// Whether the cell carries a second state (the LSTM's cell state `c`).
    pub fn has_cell_state(self) -> bool {
        matches!(self, CellKind::Lstm)
    }

    pub fn name(self) -> &'static str {
        match self {
            CellKind::Lstm => "lstm",
            CellKind::Gru => "gru",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "lstm" => Ok(CellKind::Lstm),
            "gru" => Ok(CellKind::Gru),
            _ => Err(Error::Name {
                arg: "cell",
                expected: "'lstm', 'gru'".into(),
                got: name.into(),
            }),
        }
    }
}

/// Architecture of a (possibly stacked, bidirectional) recurrent network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RnnConfig {
    pub cell: CellKind,
    pub input_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub bidirectional: bool,
    pub bias: bool,
}

impl RnnConfig {
    /// Validates sizes (all at least 1).
    pub fn new(
        cell: CellKind,
        input_size: usize,
        hidden_size: usize,
        num_layers: usize,
        bidirectional: bool,
        bias: bool,
    ) -> Result<Self> {
        for (arg, v) in [
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ] {
            if v == 0 {
                return Err(Error::Value {
                    arg,
                    expected: "an integer >= 1".into(),
                    got: "0".into(),
                });
            }
        }
        Ok(RnnConfig {
            cell,
            input_size,
            hidden_size,
            num_layers,
            bidirectional,
            bias,
        })
    }

    /// 2 when bidirectional, else 1 (PyTorch's `D`).
    pub fn num_directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    /// `G * H`: rows of `weight_ih` and `weight_hh`.
    pub fn gate_width(&self) -> usize {
        self.cell.gate_count() * self.hidden_size
    }

    /// Input features of layer `layer`: `input_size` for the first, `D * H` above it.
    pub fn layer_input_size(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.num_directions() * self.hidden_size
        }
    }

    /// Features of the output sequence: `D * H`.
    pub fn output_size(&self) -> usize {
        self.num_directions() * self.hidden_size
    }
}
