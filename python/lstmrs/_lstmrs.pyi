"""Type stubs of the Rust extension module. Use the public API in :mod:`lstmrs` instead: this
layer expects C-contiguous arrays of the network's dtype and does no conversion."""

import numpy as np
import numpy.typing as npt

__version__: str

def set_num_threads(n: int) -> None: ...
def compile_cell(json: str) -> str:
    """Validates and compiles a cell description (JSON); returns the cell's name."""

def get_num_threads() -> int: ...
def set_memory_limit(nbytes: int | None) -> None: ...
def get_memory_limit() -> int: ...

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

class RnnCore:
    """A recurrent network's configuration and weights (one flat buffer)."""

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bias: bool,
        bidirectional: bool,
        dtype: str,
        seed: int,
    ) -> None: ...
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
    ) -> tuple[
        npt.NDArray[np.floating],
        npt.NDArray[np.floating],
        npt.NDArray[np.floating],
        npt.NDArray[np.floating] | None,
    ]: ...

class Seq2SeqCore:
    """An encoder-decoder's architecture; its weights are a flat array the caller owns."""

    def __init__(
        self,
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
    ) -> None: ...
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
