//! Writes the seed corpora: `seeds <dir>` (normally `fuzz/corpus`) makes `<dir>/<target>/`
//! for each fuzz target and fills it with real messages and files (see `pk_fuzz::seeds`).

fn main() {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: seeds <corpus directory>");
        std::process::exit(2);
    };
    match pk_fuzz::seeds::write_all(std::path::Path::new(&dir)) {
        Ok((count, bytes)) => println!("{count} seeds, {bytes} bytes"),
        Err(e) => {
            eprintln!("seeds: {e}");
            std::process::exit(1);
        }
    }
}
