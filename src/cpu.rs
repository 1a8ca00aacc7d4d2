//! The processor features a build was compiled to assume, checked when the binary starts.
//!
//! On x86-64 the project builds for x86-64-v3 with AES (`.cargo/config.toml`, README "Processor
//! baseline"): the compiler uses AVX2, BMI2 and their kin wherever it sees fit, so the binary
//! would die of an illegal instruction on a processor without them, at a moment no one chose.
//! [`missing`] names such features, so that the binary refuses to start instead, saying why. A
//! build for any x86-64 processor (`RUSTFLAGS=""`) assumes none of them.

/// The features this build was compiled to assume that the processor it runs on lacks (none for
/// a default build).
pub fn missing() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut lacking = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! check {
            ($($feature:tt),*) => {
                $(
                    if cfg!(target_feature = $feature)
                        && !std::arch::is_x86_feature_detected!($feature)
                    {
                        lacking.push($feature);
                    }
                )*
            };
        }
        // What x86-64-v2 and -v3 add to the baseline, and AES, which ahash uses when built for it.
        check!(
            "sse3",
            "ssse3",
            "sse4.1",
            "sse4.2",
            "popcnt",
            "cmpxchg16b",
            "avx",
            "avx2",
            "bmi1",
            "bmi2",
            "f16c",
            "fma",
            "lzcnt",
            "movbe",
            "xsave",
            "aes",
            "pclmulqdq"
        );
    }
    lacking
}

/// Why a binary built for `lacking` cannot run on this processor, and what to do about it.
pub fn refusal(lacking: &[&str]) -> String {
    format!(
        "this binary was built for processor features this processor lacks ({}); to run it \
         here, build it for any x86-64 processor: `RUSTFLAGS=\"\" cargo build --release`",
        lacking.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_each_missing_feature_and_how_to_build_for_this_processor() {
        let text = refusal(&["avx2", "bmi2"]);
        assert!(text.contains("(avx2, bmi2)"), "{text}");
        assert!(
            text.contains("`RUSTFLAGS=\"\" cargo build --release`"),
            "{text}"
        );
    }
}
