//! Tensor names: the one map between Hugging Face and GGUF (llama.cpp) names, read by the
//! loader, the GGUF writer, PTQ's source reader and GGUF config detection. A leaf module: it
//! imports nothing.

/// The token embeddings, final norm and output layer, by their Hugging Face names.
pub const EMBED: &str = "model.embed_tokens.weight";
pub const NORM: &str = "model.norm.weight";
pub const LM_HEAD: &str = "lm_head.weight";

/// The one map between Hugging Face and GGUF (llama.cpp) tensor names: (Hugging Face, GGUF),
/// decoder-block rows without their layer prefix (`model.layers.{i}.`, `blk.{i}.`). Both
/// families of sub-norm names map to llama.cpp's one pair.
pub const TENSOR_NAMES: &[(&str, &str)] = &[
    (EMBED, "token_embd.weight"),
    (NORM, "output_norm.weight"),
    (LM_HEAD, "output.weight"),
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("self_attn.attn_sub_norm.weight", "attn_sub_norm.weight"),
    ("mlp.ffn_sub_norm.weight", "ffn_sub_norm.weight"),
    ("self_attn.inner_attn_ln.weight", "attn_sub_norm.weight"),
    ("mlp.ffn_layernorm.weight", "ffn_sub_norm.weight"),
];

/// The Hugging Face name of tensor `part` of block `layer` (a model-wide tensor when None).
pub fn hf_name(layer: Option<usize>, part: &str) -> String {
    match layer {
        None => part.to_string(),
        Some(i) => format!("model.layers.{i}.{part}"),
    }
}

/// The GGUF name of the tensor whose Hugging Face name is `hf_part` (without the layer
/// prefix). Every name binllm asks for is in `TENSOR_NAMES`; one that is not keeps its
/// Hugging Face form, which no GGUF file holds, so the loader reports it missing by name.
pub fn gguf_name(layer: Option<usize>, hf_part: &str) -> String {
    let part = TENSOR_NAMES.iter().find(|(hf, _)| *hf == hf_part).map_or(hf_part, |(_, gguf)| *gguf);
    match layer {
        None => part.to_string(),
        Some(i) => format!("blk.{i}.{part}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names_come_from_one_table() {
        assert_eq!(gguf_name(Some(3), "self_attn.o_proj.weight"), "blk.3.attn_output.weight");
        assert_eq!(gguf_name(None, LM_HEAD), "output.weight");
        assert_eq!(gguf_name(Some(0), "mlp.ffn_layernorm.weight"), gguf_name(Some(0), "mlp.ffn_sub_norm.weight"));
        let hf: std::collections::HashSet<_> = TENSOR_NAMES.iter().map(|(h, _)| h).collect();
        assert_eq!(hf.len(), TENSOR_NAMES.len());
    }
}
