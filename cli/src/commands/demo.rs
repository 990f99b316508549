//! `dvd demo`: the demo model's synthetic world. `images` writes fresh pictures and the
//! questions about them; `eval` asks those questions through a gateway (the decoupled path), or
//! in this process through `dvd generate`'s coupled path, and scores the answers.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use dvd_bench::serve::client::{Endpoint, stream_chat};
use dvd_bench::serve::dataset::image_file_part;
use dvd_demo_world::{Question, Scene, Tally, is_right, render};
use dvd_language_server::generate::generate;
use dvd_language_server::model::LanguageModel;
use dvd_language_server::sampling::SamplingParams;
use dvd_language_server::text::{PromptFormat, Tokenizer};
use dvd_vision_server::model::{LoadOptions, VisionModel};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::device::ComputeArgs;
use super::generate::{encode_images, prompt_ids, round_to_wire, stop_ids, user_prompt};

/// `dvd demo` subcommands.
#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Writes fresh pictures of the demo world and `questions.jsonl` (image, question, answer).
    Images(ImagesArgs),
    /// Asks every question of a `questions.jsonl` and reports accuracy per question kind.
    Eval(EvalArgs),
}

impl DemoCommand {
    /// Runs the subcommand.
    pub fn run(self) -> Result<()> {
        match self {
            Self::Images(args) => args.run(),
            Self::Eval(args) => args.run(),
        }
    }
}

/// Options of `dvd demo images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Directory to write the PNGs and questions.jsonl into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Pictures to draw.
    #[arg(long, default_value_t = 20)]
    count: usize,
    /// Seed of the pictures (the demo model trained on seeds below 1,000,000).
    #[arg(long, default_value_t = 1_000_000)]
    seed: u64,
    /// Shapes per picture (1 to 3); default: uniformly 1 to 3.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=3))]
    shapes: Option<u8>,
}

/// One line of questions.jsonl.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Entry {
    /// The picture, relative to the file's directory.
    image: PathBuf,
    #[serde(flatten)]
    question: Question,
}

impl ImagesArgs {
    fn run(self) -> Result<()> {
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("creating {}", self.out.display()))?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut lines = String::new();
        for i in 0..self.count {
            let scene = Scene::sample(&mut rng, self.shapes.map(usize::from));
            let name = PathBuf::from(format!("world-{}-{i:04}.png", self.seed));
            let path = self.out.join(&name);
            render(&scene)
                .save(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            for question in Question::for_scene(&scene) {
                let entry = Entry {
                    image: name.clone(),
                    question,
                };
                lines.push_str(&serde_json::to_string(&entry)?);
                lines.push('\n');
            }
        }
        let path = self.out.join("questions.jsonl");
        std::fs::write(&path, lines).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {} pictures and {}", self.count, path.display());
        Ok(())
    }
}

/// Options of `dvd demo eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The questions.jsonl written by `dvd demo images`.
    #[arg(long)]
    questions: PathBuf,
    /// Gateway to ask (the decoupled deployment).
    #[arg(
        long,
        default_value_t = super::gateway::default_url(),
        conflicts_with = "coupled"
    )]
    url: String,
    /// Ask in this process instead, through `dvd generate`'s coupled path (features rounded to
    /// BF16 as vision servers send them).
    #[arg(long)]
    coupled: bool,
    /// Model directory or hub id for --coupled (default: the embedded demo model).
    #[arg(long, requires = "coupled")]
    model: Option<String>,
    /// Requests in flight at once (gateway).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
    /// Fail (exit status 1) when any scored kind is below this accuracy.
    #[arg(long)]
    min_accuracy: Option<f64>,
    /// Print one JSON object (accuracy and every answer) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    compute: ComputeArgs,
}

impl EvalArgs {
    fn run(self) -> Result<()> {
        let entries = read_entries(&self.questions)?;
        let base = self
            .questions
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let answers = match self.coupled {
            true => self.ask_coupled(&entries, &base)?,
            false => self.ask_gateway(&entries, &base)?,
        };
        let mut tally = Tally::default();
        let mut rows = Vec::with_capacity(entries.len());
        for (entry, answer) in entries.iter().zip(&answers) {
            let q = &entry.question;
            let right = is_right(q.kind, &q.expected, answer);
            tally.record(q.kind, right);
            rows.push(json!({
                "image": entry.image, "kind": q.kind, "question": q.question,
                "expected": q.expected, "answer": answer, "right": right,
            }));
        }
        let scored = tally.rows();
        let accuracy: BTreeMap<&str, f64> = scored
            .iter()
            .map(|(k, _, _, acc)| (k.name(), *acc))
            .collect();
        if self.json {
            let asked: BTreeMap<&str, usize> =
                scored.iter().map(|(k, _, n, _)| (k.name(), *n)).collect();
            println!(
                "{}",
                json!({"accuracy": accuracy, "asked": asked, "answers": rows})
            );
        } else {
            println!(
                "{:<10} {:>6} {:>6} {:>9}",
                "question", "right", "asked", "accuracy"
            );
            for (kind, right, n, acc) in &scored {
                println!("{:<10} {right:>6} {n:>6} {acc:>9.3}", kind.name());
            }
        }
        if let Some(min) = self.min_accuracy
            && let Some((kind, acc)) = accuracy.iter().find(|(_, acc)| **acc < min)
        {
            bail!("{kind} accuracy {acc:.3} is below {min}");
        }
        Ok(())
    }

    /// Every question through the gateway's OpenAI API, `concurrency` at a time, greedy.
    fn ask_gateway(&self, entries: &[Entry], base: &Path) -> Result<Vec<String>> {
        let endpoint = Arc::new(Endpoint::parse(&self.url)?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let permits = Arc::new(Semaphore::new(self.concurrency.max(1)));
            let mut tasks = JoinSet::new();
            for (i, entry) in entries.iter().enumerate() {
                let body = json!({
                    "model": "",
                    "messages": [{"role": "user", "content": [
                        image_file_part(&base.join(&entry.image))?,
                        {"type": "text", "text": entry.question.question},
                    ]}],
                    "max_tokens": self.max_tokens,
                    "temperature": 0,
                    "stream": true,
                });
                let (endpoint, permits) = (endpoint.clone(), permits.clone());
                tasks.spawn(async move {
                    let _permit = permits.acquire_owned().await?;
                    let asked = stream_chat(&endpoint, &body, |_| Ok(()));
                    let timing = tokio::time::timeout(Duration::from_secs(120), asked)
                        .await
                        .context("no answer within 120 s")??;
                    anyhow::Ok((i, timing.text))
                });
            }
            let mut answers = vec![String::new(); entries.len()];
            while let Some(done) = tasks.join_next().await {
                let (i, text) = done??;
                answers[i] = text;
            }
            Ok(answers)
        })
    }

    /// Every question in this process: each picture encoded once, then one coupled generation
    /// per question (what `dvd generate --wire-features` runs).
    fn ask_coupled(&self, entries: &[Entry], base: &Path) -> Result<Vec<String>> {
        let dir = super::demo_model::or_default(self.model.as_deref())?;
        let options = LoadOptions {
            dtype: self.compute.dtype(),
            device: self.compute.open()?,
        };
        let tokenizer = Tokenizer::from_dir(&dir)?;
        let model = LanguageModel::load(&dir, &options)?;
        let vision = VisionModel::load(&dir, &options)?;
        let config = dvd_checkpoint::read_json(&dir.join("config.json"))?;
        let format = PromptFormat::for_checkpoint(&config, &tokenizer)?;
        let eos = stop_ids(&model, &tokenizer);
        let params = SamplingParams {
            max_new_tokens: self.max_tokens as usize,
            ..SamplingParams::greedy()
        };
        let mut encoded: Option<(PathBuf, (candle_core::Tensor, Vec<usize>))> = None;
        let mut answers = Vec::with_capacity(entries.len());
        let mut err = std::io::stderr();
        for (i, entry) in entries.iter().enumerate() {
            let path = base.join(&entry.image);
            let (features, tokens) = match &encoded {
                Some((p, done)) if *p == path => done.clone(),
                _ => {
                    let (features, tokens) =
                        encode_images(&vision, std::slice::from_ref(&path), None, None)?;
                    let done = (round_to_wire(&features)?, tokens);
                    encoded = Some((path, done.clone()));
                    done
                }
            };
            let (prompt, placeholder) =
                user_prompt(&format, &entry.question.question, 1, None, None, false)?;
            let (ids, image) =
                prompt_ids(&tokenizer, &prompt, placeholder, Some(&features), &tokens)?;
            let out = generate(&model, &tokenizer, &ids, image, &params, &eos, &mut |_| {})?;
            answers.push(out.text);
            if !self.json && (i + 1) % 50 == 0 {
                let _ = writeln!(err, "{} / {} answered", i + 1, entries.len());
            }
        }
        Ok(answers)
    }
}

fn read_entries(path: &Path) -> Result<Vec<Entry>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a demo question", path.display(), n + 1))
        })
        .collect()
}
