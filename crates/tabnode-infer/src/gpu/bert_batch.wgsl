// The batch every BERT kernel reads (`bert.rs` writes it before each
// submission and puts this in front of each kernel's source).
struct Batch {
    tokens: u32,
    seqs: u32,
    _a: u32,
    _b: u32,
}
