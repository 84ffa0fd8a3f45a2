#[test]
fn scratch() {
    let mut w = cue_sim::World::online(2, 5);
    let files: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| {
            (
                format!("n{i}.md"),
                format!("---\ntitle: {i}\n---\nbody {i}\n").into_bytes(),
            )
        })
        .collect();
    w.write_many(0, &files);
    w.settle_converged();
}
