"""Type stubs of the Rust extension module. Use the public API in :mod:`lstmrs` instead: this
layer expects C-contiguous arrays of the network's dtype and does no conversion."""

from typing import Any, TypeAlias, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "ConvLstmCore",
    "ConvLstmTape",
    "LossSpec",
    "LowpCore",
    "ModelCore",
    "OptimizerCore",
    "RnnCore",
    "Seq2SeqCore",
    "StepperCore",
    "Tape",
    "__version__",
    "compile_cell",
    "cpu_kernels",
    "dtw_classify",
    "dtw_leave_one_out",
    "get_memory_limit",
    "get_num_threads",
    "gpu_available",
    "gpu_info",
    "gpu_probe",
    "lowp_kernels",
    "set_memory_limit",
    "set_num_threads",
]

_Array: TypeAlias = npt.NDArray[np.floating]

__version__: str

def set_num_threads(n: int) -> None: ...
def compile_cell(json: str) -> str:
    """Validates and compiles a cell description (JSON); returns the cell's name."""

def get_num_threads() -> int: ...
def cpu_kernels() -> dict[str, str]:
    """{kernel family: instruction set} of the f32 CPU kernels ("avx512", "avx2", "portable")."""

def set_memory_limit(nbytes: int | None) -> None: ...
def get_memory_limit() -> int: ...
def gpu_available() -> bool:
    """Whether `device="gpu"` can run here."""

def gpu_info() -> dict[str, Any]:
    """{"available": bool, "reason": str | None, "name", "backend", "device_type", ...}."""

def gpu_probe(n: int, dispatches: int, repeats: int) -> dict[str, float]:
    """The benchmark's device probe (not public API)."""

def dtw_leave_one_out(
    x: npt.NDArray[np.float64],
    lens: npt.NDArray[np.int64],
    labels: npt.NDArray[np.int64],
    windows: list[float],
) -> list[float]:
    """Leave-one-out accuracy of 1-NN DTW for each Sakoe-Chiba band fraction in `windows`."""

def dtw_classify(
    x: npt.NDArray[np.float64],
    lens: npt.NDArray[np.int64],
    labels: npt.NDArray[np.int64],
    queries: npt.NDArray[np.float64],
    query_lens: npt.NDArray[np.int64],
    window: float,
) -> npt.NDArray[np.int64]:
    """The label of each query's nearest training series under band fraction `window`."""

def lowp_kernels(dtype: str) -> list[str]:
    """The reduced-precision kernels this CPU runs for `dtype`, the default first."""

@final
class LowpCore:
    """A built-in LSTM/GRU with bf16 or int8 weights, for inference."""

    def __new__(
        cls,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bias: bool,
        bidirectional: bool,
        flat: npt.NDArray[np.float32],
        dtype: str,
        kernel: str | None = None,
    ) -> LowpCore: ...
    @property
    def dtype(self) -> str: ...
    @property
    def kernel(self) -> str: ...
    @property
    def weight_bytes(self) -> int: ...
    def forward(
        self,
        x: npt.NDArray[np.float32],
        h0: npt.NDArray[np.float32] | None,
        c0: npt.NDArray[np.float32] | None,
        lengths: npt.NDArray[np.int64] | None,
        batch_first: bool,
    ) -> tuple[_Array, _Array, _Array | None]: ...

@final
class Tape:
    """What RnnCore.backward needs from a forward call (forward(..., keep_tape=True))."""

    @property
    def dtype(self) -> str: ...
    @property
    def seq_len(self) -> int: ...
    @property
    def batch(self) -> int: ...
    @property
    def batch_first(self) -> bool: ...
    @property
    def consumed(self) -> bool: ...

@final
class RnnCore:
    """A recurrent network's configuration and weights (one flat buffer)."""

    def __new__(
        cls,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bias: bool,
        bidirectional: bool,
        dtype: str,
        seed: int,
        proj_size: int = 0,
    ) -> RnnCore: ...
    @property
    def cell(self) -> str: ...
    @property
    def cell_description(self) -> str | None: ...
    @property
    def input_size(self) -> int: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def proj_size(self) -> int: ...
    @property
    def bias(self) -> bool: ...
    @property
    def bidirectional(self) -> bool: ...
    @property
    def dtype(self) -> str: ...
    @property
    def num_parameters(self) -> int: ...
    def param_specs(self) -> list[tuple[str, tuple[int, ...]]]: ...
    def get_param(self, name: str) -> npt.NDArray[np.floating]: ...
    def set_param(self, name: str, values: npt.NDArray[np.floating]) -> None: ...
    def get_flat(self) -> npt.NDArray[np.floating]: ...
    def set_flat(self, values: npt.NDArray[np.floating]) -> None: ...
    def forward(
        self,
        x: npt.NDArray[np.floating],
        h0: npt.NDArray[np.floating] | None = None,
        c0: npt.NDArray[np.floating] | None = None,
        lengths: npt.NDArray[np.int64] | None = None,
        batch_first: bool = True,
        training: bool = False,
        dropout: float = 0.0,
        seed: int = 0,
        keep_tape: bool = False,
        device: str = "cpu",
    ) -> tuple[
        npt.NDArray[np.floating],
        npt.NDArray[np.floating],
        npt.NDArray[np.floating] | None,
        Tape | None,
    ]: ...
    def backward(
        self,
        tape: Tape,
        d_out: npt.NDArray[np.floating] | None = None,
        d_h_n: npt.NDArray[np.floating] | None = None,
        d_c_n: npt.NDArray[np.floating] | None = None,
        retain_tape: bool = False,
    ) -> tuple[
        npt.NDArray[np.floating],
        npt.NDArray[np.floating],
        npt.NDArray[np.floating],
        npt.NDArray[np.floating] | None,
    ]: ...

@final
class LossSpec:
    """A loss and its options, as the core computes it."""

    def __new__(
        cls,
        name: str,
        ignore_index: int = -100,
        class_weights: list[float] | None = None,
        delta: float = 1.0,
    ) -> LossSpec: ...
    @property
    def name(self) -> str: ...

@final
class OptimizerCore:
    """A built-in optimizer's state over a flat parameter buffer; `step` updates in place."""

    def __new__(
        cls, name: str, num_params: int, dtype: str = "float32", **hyper: Any
    ) -> OptimizerCore: ...
    @property
    def name(self) -> str: ...
    @property
    def steps(self) -> int: ...
    def hyper_params(self) -> list[tuple[str, float]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def step(self, params: _Array, grads: _Array, lr: float) -> None: ...

@final
class ModelCore:
    """A whole model (input, recurrent stack, pooling, head) over one flat weight buffer."""

    def __new__(cls, config_json: str, dtype: str = "float32", seed: int = 0) -> ModelCore: ...
    @property
    def num_params(self) -> int: ...
    @property
    def config_json(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    def set_device(self, device: str) -> None: ...
    def param_specs(self) -> list[tuple[str, list[int]]]: ...
    def get_flat(self) -> _Array: ...
    def set_flat(self, values: _Array) -> None: ...
    def params_view(self) -> _Array: ...
    def predict(
        self,
        x: npt.NDArray[Any],
        lengths: npt.NDArray[np.int64] | None = None,
        h0: _Array | None = None,
        c0: _Array | None = None,
    ) -> tuple[_Array, _Array, _Array | None]: ...
    def loss_and_grad(
        self,
        x: npt.NDArray[Any],
        y: npt.NDArray[Any],
        loss: LossSpec,
        lengths: npt.NDArray[np.int64] | None = None,
        h0: _Array | None = None,
        c0: _Array | None = None,
        training: bool = False,
        seed: int = 0,
    ) -> tuple[float, _Array]: ...
    def input_gradient(
        self,
        x: npt.NDArray[Any],
        d_output: _Array,
        lengths: npt.NDArray[np.int64] | None = None,
        embedded: bool = False,
    ) -> tuple[_Array, _Array, _Array | None]: ...
    def embed(self, x: npt.NDArray[np.int64]) -> _Array: ...
    def trace(
        self,
        x: npt.NDArray[Any],
        lengths: npt.NDArray[np.int64] | None = None,
        embedded: bool = False,
    ) -> tuple[
        _Array,
        list[tuple[int, int, list[tuple[str, _Array]], list[tuple[str, _Array]]]],
        _Array | None,
    ]: ...
    def train_step(
        self,
        x: npt.NDArray[Any],
        y: npt.NDArray[Any],
        loss: LossSpec,
        optimizer: OptimizerCore,
        lr: float,
        seed: int,
        lengths: npt.NDArray[np.int64] | None = None,
        h0: _Array | None = None,
        c0: _Array | None = None,
        clip_norm: float | None = None,
        clip_value: float | None = None,
    ) -> tuple[float, float, _Array, _Array, _Array | None]: ...
    def loss_and_grad_into(
        self,
        x: npt.NDArray[Any],
        y: npt.NDArray[Any],
        loss: LossSpec,
        grad: _Array,
        seed: int = 0,
        lengths: npt.NDArray[np.int64] | None = None,
        h0: _Array | None = None,
        c0: _Array | None = None,
        clip_norm: float | None = None,
        clip_value: float | None = None,
    ) -> tuple[float, float, _Array, _Array, _Array | None]: ...
    def loss(
        self,
        x: npt.NDArray[Any],
        y: npt.NDArray[Any],
        loss: LossSpec,
        lengths: npt.NDArray[np.int64] | None = None,
        h0: _Array | None = None,
        c0: _Array | None = None,
    ) -> tuple[float, _Array, _Array, _Array | None]: ...

@final
class StepperCore:
    """Step-by-step inference of a ModelCore: one time step per call, the state kept inside."""

    def __new__(cls, model: ModelCore, batch: int = 1) -> StepperCore: ...
    @property
    def steps(self) -> int: ...
    @property
    def batch(self) -> int: ...
    def step(self, x_t: npt.NDArray[Any]) -> _Array | None: ...
    def reset(self) -> None: ...
    def get_state(self) -> tuple[_Array, _Array | None]: ...
    def set_state(self, h: _Array, c: _Array | None = None) -> None: ...

@final
class Seq2SeqCore:
    """An encoder-decoder's architecture; its weights are a flat array the caller owns."""

    def __new__(
        cls,
        *,
        cell: str,
        src_vocab: int,
        tgt_vocab: int,
        embed_size: int,
        encoder_hidden: int,
        num_layers: int,
        bidirectional: bool,
        hidden_size: int,
        attention: str,
        attention_size: int,
        decoder_layers: int = 1,
        decoder_cell: str = "lstm",
    ) -> Seq2SeqCore: ...
    @property
    def num_params(self) -> int: ...
    def param_specs(self) -> list[tuple[str, list[int]]]: ...
    def init(self, seed: int, dtype: str = "float32") -> npt.NDArray[np.floating]: ...
    def loss_and_grad(
        self,
        params: npt.NDArray[np.floating],
        src: npt.NDArray[np.int64],
        src_lengths: npt.NDArray[np.int64],
        tgt: npt.NDArray[np.int64],
        tgt_lengths: npt.NDArray[np.int64],
        *,
        bos: int,
        label_smoothing: float = 0.0,
        sampling_rate: float = 0.0,
        dropout: float = 0.0,
        seed: int = 0,
        grad: bool = True,
    ) -> tuple[float, int, int, npt.NDArray[np.floating] | None]: ...
    def decode(
        self,
        params: npt.NDArray[np.floating],
        src: npt.NDArray[np.int64],
        src_lengths: npt.NDArray[np.int64],
        *,
        bos: int,
        eos: int,
        beam: int = 1,
        alpha: float = 0.0,
        max_len: int = 50,
        attention: bool = False,
        force_beam: bool = False,
    ) -> list[tuple[list[int], float, bool, npt.NDArray[np.floating] | None]]: ...

@final
class ConvLstmTape:
    """What ConvLstmCore.backward needs from a forward call (forward(..., keep_tape=True))."""

    @property
    def dtype(self) -> str: ...
    @property
    def batch(self) -> int: ...
    @property
    def seq_len(self) -> int: ...
    @property
    def frame_size(self) -> tuple[int, int]: ...

@final
class ConvLstmCore:
    """A stacked ConvLSTM's configuration and weights (one flat buffer)."""

    def __new__(
        cls,
        in_channels: int,
        hidden_channels: int,
        kernel_size: tuple[int, int],
        padding: tuple[int, int],
        num_layers: int,
        bias: bool,
        dtype: str,
        seed: int,
    ) -> ConvLstmCore: ...
    @property
    def num_parameters(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    def param_specs(self) -> list[tuple[str, tuple[int, ...]]]: ...
    def state_size(self, height: int, width: int) -> tuple[int, int]: ...
    def get_param(self, name: str) -> _Array: ...
    def set_param(self, name: str, values: _Array) -> None: ...
    def get_flat(self) -> _Array: ...
    def set_flat(self, values: _Array) -> None: ...
    def forward(
        self,
        x: _Array,
        h0: _Array | None = None,
        c0: _Array | None = None,
        keep_tape: bool = False,
    ) -> tuple[_Array, _Array, _Array, ConvLstmTape | None]: ...
    def backward(
        self,
        tape: ConvLstmTape,
        d_out: _Array | None = None,
        d_h_n: _Array | None = None,
        d_c_n: _Array | None = None,
    ) -> tuple[_Array, _Array, _Array, _Array]: ...
