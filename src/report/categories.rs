//! The categories of a chart or table (attacks, defences, conditions...) in the order the rows
//! first name them, so a figure's axes follow the experiment's own order.

/// Each distinct item once, in order of first appearance.
pub(crate) fn first_seen<T: PartialEq>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_first_occurrence_order() {
        assert_eq!(super::first_seen(["b", "a", "b", "c", "a"]), vec!["b", "a", "c"]);
        assert!(super::first_seen(Vec::<u8>::new()).is_empty());
    }
}
