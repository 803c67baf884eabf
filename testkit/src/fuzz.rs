//! Mutation fuzzing in the normal test suite (the nightly-only cargo-fuzz is not available on
//! this toolchain): a fixed-seed xorshift generator, and a mutator that flips, truncates, splices
//! in tokens, cuts, inserts and repeats. Deterministic, so a failure reproduces; the caller
//! bounds the number of rounds.

/// A xorshift64 generator; the seed must not be 0.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// `input` changed one to four times; `tokens` are byte strings that steer the parser under test
/// into its branches (delimiters, keywords, edge numbers), spliced in at random places.
pub fn mutate(rng: &mut Rng, input: &[u8], tokens: &[&[u8]]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 => flip_bit(rng, &mut v),
            1 => truncate(rng, &mut v),
            2 if !tokens.is_empty() => {
                let i = rng.below(v.len() + 1);
                let tok = tokens[rng.below(tokens.len())];
                v.splice(i..i, tok.iter().copied());
            }
            3 => cut(rng, &mut v),
            4 => insert_byte(rng, &mut v),
            _ => {
                // Repeat a slice: deep nesting, long lines, many fields.
                if !v.is_empty() {
                    let a = rng.below(v.len());
                    let chunk: Vec<u8> = v[a..].iter().take(16).copied().collect();
                    for _ in 0..rng.below(64) {
                        v.extend_from_slice(&chunk);
                    }
                }
            }
        }
    }
    v
}

/// Flips one bit (nothing to do in an empty input).
pub fn flip_bit(rng: &mut Rng, v: &mut [u8]) {
    if !v.is_empty() {
        let i = rng.below(v.len());
        v[i] ^= 1 << rng.below(8);
    }
}

/// Cuts the input off somewhere.
pub fn truncate(rng: &mut Rng, v: &mut Vec<u8>) {
    if !v.is_empty() {
        let i = rng.below(v.len());
        v.truncate(i);
    }
}

/// Removes a run from the middle.
pub fn cut(rng: &mut Rng, v: &mut Vec<u8>) {
    if v.len() > 1 {
        let a = rng.below(v.len());
        let b = a + rng.below(v.len() - a);
        v.drain(a..b);
    }
}

/// Inserts one random byte.
pub fn insert_byte(rng: &mut Rng, v: &mut Vec<u8>) {
    let i = rng.below(v.len() + 1);
    let b = rng.next_u64() as u8;
    v.insert(i, b);
}
