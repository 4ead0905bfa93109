//! The BERT encoder stack of all-MiniLM-L6-v2 (inference only) in candle, laid out for the
//! CPU: each weight matrix is stored transposed (`in × out`, contiguous), so gemm reads it
//! as is instead of repacking it on every call, and query, key and value are one matmul.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use serde::Deserialize;

/// The fields of the model's config.json this forward pass uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: u32,
}

/// `x · weight_t + bias` with `weight_t` already `in × out` and contiguous.
struct Dense {
    weight_t: Tensor,
    bias: Tensor,
}

impl Dense {
    fn load(vb: VarBuilder, inputs: usize, outputs: usize) -> Result<Self> {
        let weight = vb.get((outputs, inputs), "weight")?;
        let bias = vb.get(outputs, "bias")?;
        Self::from_weights(&weight, bias)
    }

    /// Several layers reading the same input, fused into one wider matmul.
    fn fused(vbs: &[VarBuilder], inputs: usize, outputs: usize) -> Result<Self> {
        let mut weights = Vec::with_capacity(vbs.len());
        let mut biases = Vec::with_capacity(vbs.len());
        for vb in vbs {
            weights.push(vb.get((outputs, inputs), "weight")?);
            biases.push(vb.get(outputs, "bias")?);
        }
        Self::from_weights(&Tensor::cat(&weights, 0)?, Tensor::cat(&biases, 0)?)
    }

    fn from_weights(weight: &Tensor, bias: Tensor) -> Result<Self> {
        Ok(Self {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    /// `rows × in` to `rows × out`.
    fn forward(&self, rows: &Tensor) -> Result<Tensor> {
        rows.matmul(&self.weight_t)?.broadcast_add(&self.bias)
    }
}

struct Layer {
    query_key_value: Dense,
    attention_output: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

impl Layer {
    fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        let hidden = config.hidden_size;
        let attention = vb.pp("attention");
        let projections = attention.pp("self");
        Ok(Self {
            query_key_value: Dense::fused(
                &[
                    projections.pp("query"),
                    projections.pp("key"),
                    projections.pp("value"),
                ],
                hidden,
                hidden,
            )?,
            attention_output: Dense::load(attention.pp("output").pp("dense"), hidden, hidden)?,
            attention_norm: layer_norm(attention.pp("output").pp("LayerNorm"), config)?,
            intermediate: Dense::load(
                vb.pp("intermediate").pp("dense"),
                hidden,
                config.intermediate_size,
            )?,
            output: Dense::load(
                vb.pp("output").pp("dense"),
                config.intermediate_size,
                hidden,
            )?,
            output_norm: layer_norm(vb.pp("output").pp("LayerNorm"), config)?,
        })
    }
}

fn layer_norm(vb: VarBuilder, config: &BertConfig) -> Result<LayerNorm> {
    let weight = vb.get(config.hidden_size, "weight")?;
    let bias = vb.get(config.hidden_size, "bias")?;
    Ok(LayerNorm::new(weight, bias, config.layer_norm_eps))
}

/// BERT without its pooler: token ids in, one hidden vector per token out.
pub struct BertEncoder {
    word_embeddings: Embedding,
    position_embeddings: Tensor,
    token_type_embedding: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
}

impl BertEncoder {
    /// Reads the weights under `embeddings.` and `encoder.layer.N.` (or under `bert.`).
    pub fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        if config.hidden_act != "gelu" {
            candle_core::bail!("hidden_act {:?} is not supported", config.hidden_act);
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            candle_core::bail!("hidden_size must be a multiple of num_attention_heads");
        }
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let hidden = config.hidden_size;
        let embeddings = vb.pp("embeddings");
        let word_embeddings = Embedding::new(
            embeddings.get((config.vocab_size, hidden), "word_embeddings.weight")?,
            hidden,
        );
        let position_embeddings = embeddings.get(
            (config.max_position_embeddings, hidden),
            "position_embeddings.weight",
        )?;
        // Sentence embeddings use a single segment: token type 0 everywhere.
        let token_type_embedding = embeddings
            .get(
                (config.type_vocab_size, hidden),
                "token_type_embeddings.weight",
            )?
            .narrow(0, 0, 1)?
            .contiguous()?;
        let embedding_norm = layer_norm(embeddings.pp("LayerNorm"), config)?;
        let layers = (0..config.num_hidden_layers)
            .map(|index| Layer::load(vb.pp(format!("encoder.layer.{index}")), config))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word_embeddings,
            position_embeddings,
            token_type_embedding,
            embedding_norm,
            layers,
            heads: config.num_attention_heads,
            hidden,
        })
    }

    /// `token_ids` and `attention_mask` are `batch × tokens` (u32); returns
    /// `batch × tokens × hidden`. Masked positions take part in nothing but their own rows.
    pub fn forward(&self, token_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (batch, tokens) = token_ids.dims2()?;
        let positions = self.position_embeddings.narrow(0, 0, tokens)?;
        let embedded = self
            .word_embeddings
            .forward(token_ids)?
            .broadcast_add(&positions)?
            .broadcast_add(&self.token_type_embedding)?;
        let mut hidden = self
            .embedding_norm
            .forward(&embedded)?
            .reshape((batch * tokens, self.hidden))?;
        // 0 where attended, a large negative number where masked: batch × 1 × 1 × tokens.
        let mask_bias = ((attention_mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?
            .reshape((batch, 1, 1, tokens))?;
        for layer in &self.layers {
            hidden = self.layer_forward(layer, &hidden, &mask_bias, batch, tokens)?;
        }
        hidden.reshape((batch, tokens, self.hidden))
    }

    /// One transformer layer over `(batch · tokens) × hidden` rows.
    fn layer_forward(
        &self,
        layer: &Layer,
        rows: &Tensor,
        mask_bias: &Tensor,
        batch: usize,
        tokens: usize,
    ) -> Result<Tensor> {
        let head_size = self.hidden / self.heads;
        let query_key_value = layer
            .query_key_value
            .forward(rows)?
            .reshape((batch, tokens, 3, self.heads, head_size))?;
        let split = |part: usize| -> Result<Tensor> {
            query_key_value
                .narrow(2, part, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()
        };
        let query = (split(0)? * (1.0 / (head_size as f64).sqrt()))?;
        let key_t = split(1)?.transpose(2, 3)?.contiguous()?;
        let value = split(2)?;
        let scores = query.matmul(&key_t)?.broadcast_add(mask_bias)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = weights
            .matmul(&value)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch * tokens, self.hidden))?;
        let attended = layer
            .attention_norm
            .forward(&(layer.attention_output.forward(&context)? + rows)?)?;
        let intermediate = layer.intermediate.forward(&attended)?.gelu_erf()?;
        layer
            .output_norm
            .forward(&(layer.output.forward(&intermediate)? + attended)?)
    }
}
