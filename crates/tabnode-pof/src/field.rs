//! Arithmetic modulo the Mersenne prime `P = 2⁶¹ − 1`.

/// The prime of the Freivalds check.
pub const P: u64 = (1 << 61) - 1;

/// Reduces a signed 128-bit value into `[0, P)`.
fn reduce(x: i128) -> u64 {
    let m = i128::from(P);
    let r = x % m;
    (if r < 0 { r + m } else { r }) as u64
}

/// `Σ row[j]·r[j] mod P` for integer-valued `row` (|v| < 2²⁴).
///
/// Each product is below 2⁸⁵ and the sum of at most 2¹⁸ of them below 2¹⁰³,
/// so an `i128` accumulator never overflows.
pub(crate) fn dot_f32(row: &[f32], r: &[u64]) -> u64 {
    let acc: i128 = row
        .iter()
        .zip(r)
        .map(|(&v, &x)| i128::from(v as i64) * i128::from(x))
        .sum();
    reduce(acc)
}

/// `Σ row[j]·r[j] mod P` for exact integer rows of `C` (same bounds as
/// [`dot_f32`]).
pub(crate) fn dot_i32(row: &[i32], r: &[u64]) -> u64 {
    let acc: i128 = row
        .iter()
        .zip(r)
        .map(|(&v, &x)| i128::from(v) * i128::from(x))
        .sum();
    reduce(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduction_handles_signs_and_wraps() {
        assert_eq!(reduce(-1), P - 1);
        assert_eq!(reduce(i128::from(P)), 0);
        assert_eq!(reduce(i128::from(P) * 3 + 5), 5);
        assert_eq!(dot_f32(&[-1.0, 2.0], &[3, 4]), 5);
        assert_eq!(dot_i32(&[-7], &[1]), P - 7);
        // Large values: (P-1)·(2^24-1) summed 2^18 times stays exact.
        let row = vec![16_777_215.0f32; 1 << 10];
        let r = vec![P - 1; 1 << 10];
        let expected = reduce(i128::from(16_777_215i64) * i128::from(P - 1) * 1024);
        assert_eq!(dot_f32(&row, &r), expected);
    }
}
