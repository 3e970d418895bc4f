//! Classification metrics as Dassl's evaluator reports them: accuracy, error rate, macro F1
//! (over the classes present in the labels, as sklearn's f1_score with labels=unique(y_true)),
//! per-class accuracy, confusion matrix, top-k accuracy.
use crate::{Error, Result};

/// How many labels a prediction lists, and how many nearest words interpretation shows.
pub const TOP_K: usize = 5;
/// The top-k accuracies an evaluation reports (each capped at the number of classes).
pub const EVAL_TOP_K: [usize; 2] = [1, 5];

/// The k of `topK` given as numbers (JavaScript's): each must be a whole number from 1 to
/// 2^32 - 1, refused by index and value otherwise, instead of being wrapped or truncated into
/// range (-1 would become 4294967295, and then all classes).
pub fn top_k_from_numbers(ks: &[f64]) -> Result<Vec<usize>> {
    ks.iter()
        .enumerate()
        .map(|(i, &k)| {
            if k.is_finite() && k.fract() == 0.0 && (1.0..=u32::MAX as f64).contains(&k) {
                Ok(k as usize)
            } else {
                Err(Error::InvalidArgument(format!(
                    "topK[{i}] must be a whole number from 1 to {}, got {k}",
                    u32::MAX
                )))
            }
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub total: usize,
    pub correct: usize,
    /// Percentages, as the papers report them.
    pub accuracy: f64,
    pub error_rate: f64,
    pub macro_f1: f64,
    /// Accuracy of each class (None for classes without examples).
    pub per_class_accuracy: Vec<Option<f64>>,
    /// confusion[true][predicted] counts.
    pub confusion: Vec<Vec<u32>>,
    /// (k, accuracy %) for each requested k.
    pub top_k: Vec<(usize, f64)>,
}

/// Metrics from scores (N x K, row-major; probabilities or logits) and true labels. Each k of
/// `ks` is capped at the number of classes (top-5 of 3 classes is top-3); repeats are reported once.
pub fn metrics(
    scores: &[f32],
    num_classes: usize,
    labels: &[usize],
    ks: &[usize],
) -> Result<Metrics> {
    if let Some(i) = ks.iter().position(|&k| k == 0) {
        return Err(Error::InvalidArgument(format!(
            "topK[{i}] must be at least 1"
        )));
    }
    let mut capped: Vec<usize> = Vec::new();
    for &k in ks {
        if !capped.contains(&k.min(num_classes)) {
            capped.push(k.min(num_classes));
        }
    }
    let ks = capped.as_slice();
    let n = labels.len();
    if n == 0 {
        return Err(Error::InvalidArgument("no examples to evaluate".into()));
    }
    if scores.len() != n * num_classes {
        return Err(Error::InvalidArgument(format!(
            "{} scores for {n} examples x {num_classes} classes",
            scores.len()
        )));
    }
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l >= num_classes) {
        return Err(Error::InvalidArgument(format!(
            "labels[{i}] = {l} is out of range for {num_classes} classes"
        )));
    }
    let mut confusion = vec![vec![0u32; num_classes]; num_classes];
    let mut top_hits = vec![0usize; ks.len()];
    for (i, &y) in labels.iter().enumerate() {
        let row = &scores[i * num_classes..(i + 1) * num_classes];
        // Rank of the true class: how many classes score strictly higher (ties favour lower index).
        let pred = (0..num_classes).fold(0, |best, c| if row[c] > row[best] { c } else { best });
        confusion[y][pred] += 1;
        let rank = (0..num_classes)
            .filter(|&c| row[c] > row[y] || (row[c] == row[y] && c < y))
            .count();
        for (j, &k) in ks.iter().enumerate() {
            if rank < k {
                top_hits[j] += 1;
            }
        }
    }
    let correct: usize = (0..num_classes).map(|c| confusion[c][c] as usize).sum();
    let per_class_accuracy = (0..num_classes)
        .map(|c| {
            let support: u32 = confusion[c].iter().sum();
            (support > 0).then(|| 100.0 * confusion[c][c] as f64 / support as f64)
        })
        .collect::<Vec<_>>();
    let present: Vec<usize> = (0..num_classes)
        .filter(|&c| confusion[c].iter().sum::<u32>() > 0)
        .collect();
    let f1_sum: f64 = present
        .iter()
        .map(|&c| {
            let tp = confusion[c][c] as f64;
            let fp: f64 = (0..num_classes)
                .filter(|&r| r != c)
                .map(|r| confusion[r][c] as f64)
                .sum();
            let fn_: f64 = (0..num_classes)
                .filter(|&p| p != c)
                .map(|p| confusion[c][p] as f64)
                .sum();
            let denom = 2.0 * tp + fp + fn_;
            if denom == 0.0 {
                0.0
            } else {
                2.0 * tp / denom
            }
        })
        .sum();
    let accuracy = 100.0 * correct as f64 / n as f64;
    Ok(Metrics {
        total: n,
        correct,
        accuracy,
        error_rate: 100.0 - accuracy,
        macro_f1: 100.0 * f1_sum / present.len() as f64,
        per_class_accuracy,
        confusion,
        top_k: ks
            .iter()
            .zip(top_hits)
            .map(|(&k, h)| (k, 100.0 * h as f64 / n as f64))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_example() {
        // 3 classes, 5 examples. Predictions (argmax): 0, 1, 1, 2, 0; labels: 0, 1, 2, 2, 1.
        let scores = [
            0.9, 0.05, 0.05, //
            0.1, 0.8, 0.1, //
            0.2, 0.5, 0.3, //
            0.1, 0.2, 0.7, //
            0.6, 0.3, 0.1,
        ];
        let m = metrics(&scores, 3, &[0, 1, 2, 2, 1], &[1, 2]).unwrap();
        assert_eq!(m.correct, 3);
        assert!((m.accuracy - 60.0).abs() < 1e-9);
        assert!((m.error_rate - 40.0).abs() < 1e-9);
        assert_eq!(
            m.confusion,
            vec![vec![1, 0, 0], vec![1, 1, 0], vec![0, 1, 1]]
        );
        // F1: class 0: tp1 fp1 fn0 -> 2/3; class 1: tp1 fp1 fn1 -> 1/2; class 2: tp1 fp0 fn1 -> 2/3.
        assert!((m.macro_f1 - 100.0 * (2.0 / 3.0 + 0.5 + 2.0 / 3.0) / 3.0).abs() < 1e-9);
        assert_eq!(
            m.per_class_accuracy,
            vec![Some(100.0), Some(50.0), Some(50.0)]
        );
        // top-2: example 3 (label 2, scores .2 .5 .3) is rank 1 -> hit; example 5 (label 1) rank 1 -> hit.
        assert_eq!(m.top_k, vec![(1, 60.0), (2, 100.0)]);
    }

    #[test]
    fn absent_classes_are_left_out_of_macro_f1() {
        let m = metrics(&[1.0, 0.0, 0.0, 1.0, 0.0, 0.0], 3, &[0, 0], &[1]).unwrap();
        assert_eq!(m.per_class_accuracy, vec![Some(100.0), None, None]);
        assert!((m.macro_f1 - 100.0).abs() < 1e-9);
        assert!(metrics(&[1.0], 1, &[3], &[1]).is_err());
    }
}
