//! Prints the token ids of a text with the model's tokenizer.
//! `cargo run -p tabnode-infer --example tokenize -- MODEL.gguf "text" [--special]`

use tabnode_infer::{gguf::Gguf, tokenizer::Tokenizer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: tokenize MODEL.gguf TEXT [--special]")?;
    let text = args
        .next()
        .ok_or("usage: tokenize MODEL.gguf TEXT [--special]")?;
    let special = args.next().as_deref() == Some("--special");
    let bytes = std::fs::read(path)?;
    let g = Gguf::parse(&bytes)?;
    let t = Tokenizer::from_gguf(&g)?;
    let ids = t.encode(&text, special);
    println!("{ids:?}");
    println!("{:?}", String::from_utf8_lossy(&t.decode(&ids)));
    Ok(())
}
