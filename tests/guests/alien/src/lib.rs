//! A well-formed component of another world: no ocipush imports, no `push` export.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    inline: "
        package test:alien;
        world alien {
            /// Not what ocipush runs.
            export run: func() -> string;
        }
    ",
});

struct Alien;

impl Guest for Alien {
    fn run() -> String {
        "not a pusher".to_string()
    }
}

export!(Alien);
