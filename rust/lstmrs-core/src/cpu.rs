//! Which instruction sets the f32 CPU kernels run on in this process, for benchmark records
//! (issue 16: "the record states the CPU features used by each library").

use crate::packed_gemm::Isa;

/// `(kernel, instruction set)` of each f32 CPU kernel family: `step_product` (the packed
/// per-step recurrent product, `packed_gemm`), `gate_pass` (the fused element-wise gate
/// kernels) and `gemm` (the `gemm` crate's products: input projections and weight gradients).
pub fn kernels() -> Vec<(&'static str, &'static str)> {
    vec![
        ("step_product", Isa::f32_default().name()),
        ("gate_pass", crate::gates::isa().name()),
        ("gemm", gemm_isa().name()),
    ]
}

/// What the `gemm` crate dispatches to: its AVX-512 kernels (compiled in through the `x86-v4`
/// feature) when the CPU has `avx512f`, else its FMA ones, else scalar code.
fn gemm_isa() -> Isa {
    Isa::ALL
        .into_iter()
        .find(|i| i.supported())
        .unwrap_or(Isa::Portable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_names_a_supported_instruction_set() {
        let k = kernels();
        assert_eq!(
            k.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            ["step_product", "gate_pass", "gemm"]
        );
        for (_, isa) in k {
            let isa = Isa::ALL.into_iter().find(|i| i.name() == isa).unwrap();
            assert!(isa.supported());
        }
    }
}
