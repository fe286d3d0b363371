//! Chat prompt formatting with the model's own Jinja template (`tokenizer.chat_template`).
//!
//! The template runs in minijinja with the settings HF transformers and llama.cpp use for
//! chat templates (`trim_blocks`, `lstrip_blocks`, a `raise_exception` function, Python string
//! methods such as `.strip()` through minijinja-contrib's pycompat). A file without a template
//! gets plain ChatML, which is what Qwen and SmolLM instruct models are trained on.

use crate::gguf::{GgufError, GgufFile};
use minijinja::{Environment, ErrorKind, context};

/// ChatML without a default system message, for files that carry no template.
const CHATML: &str = "{%- for message in messages %}\
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\
{%- endfor %}\
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

const TEMPLATE_NAME: &str = "chat";

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("reading the chat template from the model: {0}")]
    Gguf(#[from] GgufError),
    #[error("the model's chat template does not compile: {0:#}")]
    Compile(#[source] minijinja::Error),
    #[error("rendering the chat template failed: {0:#}")]
    Render(#[source] minijinja::Error),
    #[error("a chat needs at least one message")]
    NoMessages,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// "system", "user", "assistant" (or "tool" where the template knows it).
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template, ready to render conversations into prompt text.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    fallback: bool,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("fallback", &self.fallback)
            .field("source_len", &self.source.len())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

/// The text of the token whose id is stored under `key`, or "" when either is missing.
fn token_text(gguf: &GgufFile, key: &str) -> Result<String, GgufError> {
    let Some(id) = gguf.opt(key, GgufFile::get_u64)? else {
        return Ok(String::new());
    };
    let tokens = gguf.get_array("tokenizer.ggml.tokens")?;
    Ok(usize::try_from(id)
        .ok()
        .and_then(|i| tokens.get(i))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned())
}

impl ChatTemplate {
    /// The template stored in the file, or ChatML when it has none. `bos_token` and
    /// `eos_token` are given to the template as texts, as HF does.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, ChatError> {
        let bos = token_text(gguf, "tokenizer.ggml.bos_token_id")?;
        let eos = token_text(gguf, "tokenizer.ggml.eos_token_id")?;
        match gguf.opt("tokenizer.chat_template", GgufFile::get_str)? {
            Some(source) => Self::new(source, &bos, &eos, false),
            None => Self::new(CHATML, &bos, &eos, true),
        }
    }

    /// Compiles a template from its source.
    pub fn from_source(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatError> {
        Self::new(source, bos_token, eos_token, false)
    }

    /// Plain ChatML (no default system message).
    pub fn chatml() -> Self {
        // The built-in template is a constant that the tests compile; failing here would be a
        // bug in this file, so fall back to an empty environment rather than panic.
        Self::new(CHATML, "", "", true).unwrap_or_else(|_| ChatTemplate {
            env: Environment::new(),
            source: String::new(),
            fallback: true,
            bos_token: String::new(),
            eos_token: String::new(),
        })
    }

    fn new(
        source: &str,
        bos_token: &str,
        eos_token: &str,
        fallback: bool,
    ) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        // HF renders chat templates with trim_blocks and lstrip_blocks; without them templates
        // written for it leave stray newlines and indentation in the prompt.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(ChatError::Compile)?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            fallback,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// Renders a conversation. With `add_generation_prompt`, the text ends with the opening of
    /// the assistant's turn (`<|im_start|>assistant\n` for ChatML).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        if messages.is_empty() {
            return Err(ChatError::NoMessages);
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(ChatError::Render)?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(ChatError::Render)
    }

    /// True when the file had no template and ChatML is used instead.
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }
}
