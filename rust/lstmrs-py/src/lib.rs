//! `lstmrs._lstmrs`: the Python extension module. A thin layer over `lstmrs-core` that converts
//! NumPy arrays, validates shapes and maps errors; the public API is the `lstmrs` Python package.

mod alloc;
mod big_blocks;
mod convert;
mod convlstm;
mod dtw;
mod dtype;
mod errors;
mod gpu;
mod lowp;
mod model;
mod rnn;
mod seq2seq;

use pyo3::prelude::*;
use std::sync::Once;

/// Sets the number of worker threads every later forward and backward call runs on.
#[pyfunction]
fn set_num_threads(py: Python<'_>, n: usize) -> PyResult<()> {
    lstmrs_core::threads::set_num_threads(n).map_err(|e| errors::core_error(py, e))
}

/// `{kernel family: instruction set}` of the f32 CPU kernels in this process (for benchmark
/// records): "step_product", "gate_pass", "gemm" -> "avx512", "avx2" or "portable".
#[pyfunction]
fn cpu_kernels() -> std::collections::BTreeMap<&'static str, &'static str> {
    lstmrs_core::cpu::kernels().into_iter().collect()
}

/// The number of worker threads calls run on.
#[pyfunction]
fn get_num_threads(py: Python<'_>) -> PyResult<usize> {
    // The first call builds the pool; a panic there must not unwind into Python.
    let r = py.detach(|| errors::guarded(lstmrs_core::threads::num_threads));
    errors::lift(py, r.map(Ok))
}

extern "C" fn after_fork_in_child() {
    // The parent's worker threads do not exist in the child: without this, the first call in a
    // forked child (multiprocessing's default start method on Linux) would wait on them forever.
    lstmrs_core::threads::reset_after_fork();
    // Nor do the threads that held a weights lock at the fork: free every lock.
    lstmrs_core::forklock::after_fork_in_child();
}

/// Sets the memory ceiling in bytes (None: back to the machine's memory).
#[pyfunction]
#[pyo3(signature = (nbytes))]
fn set_memory_limit(py: Python<'_>, nbytes: Option<u64>) -> PyResult<()> {
    lstmrs_core::memory::set_limit(nbytes).map_err(|e| errors::core_error(py, e))
}

/// The memory ceiling in bytes.
#[pyfunction]
fn get_memory_limit() -> u64 {
    lstmrs_core::memory::limit()
}

fn register_fork_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain function with no captured state; it only touches the core's
        // pool slot, which is designed to be reset from a forked child.
        // A failure (ENOMEM) only loses the fork protection, so it is not an import error.
        let _ = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
}

#[pymodule]
fn _lstmrs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    alloc::configure();
    register_fork_handler();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<rnn::RnnCore>()?;
    m.add_class::<rnn::Tape>()?;
    m.add_class::<model::ModelCore>()?;
    m.add_class::<model::LossSpec>()?;
    m.add_class::<model::OptimizerCore>()?;
    m.add_class::<model::StepperCore>()?;
    m.add_class::<seq2seq::Seq2SeqCore>()?;
    m.add_class::<lowp::LowpCore>()?;
    m.add_function(wrap_pyfunction!(lowp::lowp_kernels, m)?)?;
    convlstm::register(m)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(rnn::compile_cell, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_kernels, m)?)?;
    m.add_function(wrap_pyfunction!(set_memory_limit, m)?)?;
    m.add_function(wrap_pyfunction!(get_memory_limit, m)?)?;
    m.add_function(wrap_pyfunction!(gpu::gpu_info, m)?)?;
    m.add_function(wrap_pyfunction!(gpu::gpu_available, m)?)?;
    m.add_function(wrap_pyfunction!(gpu::gpu_probe, m)?)?;
    m.add_function(wrap_pyfunction!(dtw::dtw_leave_one_out, m)?)?;
    m.add_function(wrap_pyfunction!(dtw::dtw_classify, m)?)?;
    Ok(())
}
