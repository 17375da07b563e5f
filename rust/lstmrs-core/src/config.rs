//! What a recurrent network is: its cell, sizes, depth and directions.

use crate::cellexpr::registry::{self, CellId};
use crate::cellexpr::{CompiledCell, UnitParam};
use crate::error::{Error, Result};

/// The recurrent cell, with PyTorch's gate order for the built-in ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CellKind {
    /// Gates i, f, g, o; `c' = f*c + i*g`, `h' = o*tanh(c')`.
    Lstm,
    /// Gates r, z, n; `n = tanh(W_in x + b_in + r*(W_hn h + b_hn))`, `h' = (1-z)*n + z*h`.
    Gru,
    /// A cell compiled from a description by [`register_cell`](crate::cellexpr::register_cell).
    Custom(CellId),
}

impl CellKind {
    /// The compiled program of a custom cell.
    pub fn compiled(self) -> Option<&'static CompiledCell> {
        match self {
            CellKind::Custom(id) => Some(registry::compiled(id)),
            _ => None,
        }
    }

    /// The description a custom cell was registered from.
    pub fn description(self) -> Option<&'static str> {
        match self {
            CellKind::Custom(id) => Some(registry::description(id)),
            _ => None,
        }
    }

    /// Gate blocks of the input projection (the `G` in `weight_ih`'s `[G*H, I]`).
    pub fn gate_count(self) -> usize {
        match self {
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
            CellKind::Custom(_) => self.compiled().map_or(0, |c| c.spec().x_gates()),
        }
    }

    /// Gate blocks of the recurrent projection (`weight_hh`'s `[G*H, H]`); 0: no `W_hh`.
    pub fn h_gate_count(self) -> usize {
        match self {
            CellKind::Custom(_) => self.compiled().map_or(0, |c| c.spec().h_gates()),
            _ => self.gate_count(),
        }
    }

    /// States carried between steps: state 0 is `h`, state 1 (when present) is exposed as `c`;
    /// further states (custom cells only) are internal to a forward call: they start at zero
    /// and are not returned (a `Stepper` carries them between its steps).
    pub fn num_states(self) -> usize {
        match self {
            CellKind::Lstm => 2,
            CellKind::Gru => 1,
            CellKind::Custom(_) => self.compiled().map_or(1, |c| c.spec().states().len()),
        }
    }

    /// Whether the cell carries a second state (the LSTM's cell state `c`).
    pub fn has_cell_state(self) -> bool {
        self.num_states() >= 2
    }

    /// Unit parameters (`[H]` each) of one layer-direction.
    pub fn unit_params(self) -> &'static [UnitParam] {
        self.compiled().map_or(&[], |c| c.spec().unit_params())
    }

    /// "lstm", "gru" or the custom cell's own name.
    pub fn name(self) -> &'static str {
        match self {
            CellKind::Lstm => "lstm",
            CellKind::Gru => "gru",
            CellKind::Custom(_) => self.compiled().map_or("custom", |c| c.spec().name()),
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "lstm" => Ok(CellKind::Lstm),
            "gru" => Ok(CellKind::Gru),
            _ => Err(Error::Name {
                arg: "cell",
                expected: "'lstm', 'gru' or a cell description (JSON)".into(),
                got: name.into(),
            }),
        }
    }

    /// A built-in name, or a cell description (JSON text starting with `{`), registered.
    pub fn parse(text: &str) -> Result<Self> {
        if text.trim_start().starts_with('{') {
            registry::register_cell(text)
        } else {
            Self::from_name(text)
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
    /// PyTorch's `proj_size`: 0 for none, else the LSTM's hidden state is projected to this
    /// many features by `weight_hr` (`h = W_hr (o * tanh(c))`), and `c` keeps `hidden_size`.
    pub proj_size: usize,
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
            proj_size: 0,
        })
    }

    /// The same network with its hidden state projected to `proj_size` features, as
    /// `torch.nn.LSTM(..., proj_size=P)` does: LSTM only, `0 <= P < hidden_size` (0 removes it).
    pub fn with_proj_size(self, proj_size: usize) -> Result<Self> {
        if proj_size > 0 && self.cell != CellKind::Lstm {
            return Err(Error::Value {
                arg: "proj_size",
                expected: format!(
                    "0 for a {} cell (projections exist for the built-in LSTM only, as in torch)",
                    self.cell.name()
                ),
                got: proj_size.to_string(),
            });
        }
        if proj_size >= self.hidden_size && proj_size > 0 {
            return Err(Error::Value {
                arg: "proj_size",
                expected: format!(
                    "an integer in 0..{} (smaller than hidden_size)",
                    self.hidden_size
                ),
                got: proj_size.to_string(),
            });
        }
        Ok(RnnConfig { proj_size, ..self })
    }

    /// Features of the hidden state `h` (and of each direction's output): `proj_size` when the
    /// network has projections, else `hidden_size`. The cell state `c` always has `hidden_size`.
    pub fn state_size(&self) -> usize {
        if self.proj_size > 0 {
            self.proj_size
        } else {
            self.hidden_size
        }
    }

    /// 2 when bidirectional, else 1 (PyTorch's `D`).
    pub fn num_directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    /// `G * H`: rows of `weight_ih` (and of `weight_hh` for the built-in cells).
    pub fn gate_width(&self) -> usize {
        self.x_gate_width()
    }

    /// `Gx * H`: rows of `weight_ih`.
    pub fn x_gate_width(&self) -> usize {
        self.cell.gate_count() * self.hidden_size
    }

    /// `Gh * H`: rows of `weight_hh` (0 when the cell has none).
    pub fn h_gate_width(&self) -> usize {
        self.cell.h_gate_count() * self.hidden_size
    }

    /// `P * H`: the unit parameters of one layer-direction.
    pub fn unit_width(&self) -> usize {
        self.cell.unit_params().len() * self.hidden_size
    }

    /// Input features of layer `layer`: `input_size` for the first, `D * state_size` above it.
    pub fn layer_input_size(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.output_size()
        }
    }

    /// Features of the output sequence: `D * state_size` (`D * H` without projections).
    pub fn output_size(&self) -> usize {
        self.num_directions() * self.state_size()
    }
}
