//! Avatars: upload, re-encoding, refusals, the generated default.

use std::io::Cursor;

use image::{ImageFormat, Rgba, RgbaImage};
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use crate::helpers::{Backend, ROOT_PASSWORD, spawn_app_with, with_root};

fn image(width: u32, height: u32, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    let img = RgbaImage::from_fn(width, height, |x, y| Rgba([x as u8, y as u8, 90, 255]));
    match format {
        ImageFormat::Jpeg => image::DynamicImage::ImageRgba8(img)
            .to_rgb8()
            .write_to(&mut out, format)
            .unwrap(),
        _ => img.write_to(&mut out, format).unwrap(),
    }
    out.into_inner()
}

fn form(bytes: Vec<u8>, mime: &str) -> Form {
    Form::new().part(
        "file",
        Part::bytes(bytes)
            .file_name("avatar")
            .mime_str(mime)
            .unwrap(),
    )
}

async fn upload_and_serve_avatars(backend: Backend) {
    let Some(app) = spawn_app_with(backend, with_root).await else {
        return;
    };
    let api = app.api();
    let (alice_id, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    let avatar_url = format!("/users/{alice_id}/avatar");

    // The generated default, until one is set.
    let res = api
        .client
        .get(api.url(&avatar_url))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            res.status().as_u16(),
            res.headers()["content-type"].to_str().unwrap()
        ),
        (200, "image/png")
    );
    let default = res.bytes().await.unwrap();
    assert_eq!(image::load_from_memory(&default).unwrap().width(), 128);

    for (version, format) in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP]
        .into_iter()
        .enumerate()
    {
        let res = api
            .client
            .put(api.url("/users/me/avatar"))
            .bearer_auth(&alice)
            .multipart(form(image(400, 250, format), "image/png"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{format:?}");
        assert_eq!(
            res.json::<Value>().await.unwrap()["avatar_url"],
            format!("{avatar_url}?v={}", version + 1)
        );
    }
    let stored = api
        .client
        .get(api.url(&avatar_url))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_ne!(stored, default);
    let decoded = image::load_from_memory(&stored).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (128, 128));

    // Refusals: too big, wrong type, lying or truncated files, no file, no auth.
    let mut truncated = image(300, 300, ImageFormat::Png);
    truncated.truncate(truncated.len() / 3);
    let mut lying = b"\x89PNG\r\n\x1a\n".to_vec();
    lying.extend_from_slice(&[7u8; 5000]);
    let huge = vec![0u8; 1024 * 1024 + 10];
    let cases: Vec<(&str, Form, u16, &str)> = vec![
        (
            "over 1 MiB",
            form(huge, "image/png"),
            413,
            "payload_too_large",
        ),
        (
            "a GIF",
            form(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(), "image/gif"),
            415,
            "unsupported_image",
        ),
        (
            "text called png",
            form(b"hello".to_vec(), "image/png"),
            415,
            "unsupported_image",
        ),
        (
            "truncated PNG",
            form(truncated, "image/png"),
            415,
            "unsupported_image",
        ),
        (
            "PNG header, junk body",
            form(lying, "image/png"),
            415,
            "unsupported_image",
        ),
        (
            "no file part",
            Form::new().text("other", "x"),
            422,
            "validation_failed",
        ),
    ];
    for (what, body, status, code) in cases {
        let res = api
            .client
            .put(api.url("/users/me/avatar"))
            .bearer_auth(&alice)
            .multipart(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{what}");
        assert_eq!(res.json::<Value>().await.unwrap()["code"], code, "{what}");
    }
    let res = api
        .client
        .put(api.url("/users/me/avatar"))
        .multipart(form(image(10, 10, ImageFormat::Png), "image/png"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = api
        .client
        .get(api.url(&format!("/users/{}/avatar", uuid::Uuid::new_v4())))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // The admin's user list (which leaves the images in the database) links
    // the current one.
    let root = api.login_with("root", ROOT_PASSWORD).await;
    let res = api
        .client
        .get(api.url("/admin/users?search=alice"))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let listed: Value = res.json().await.unwrap();
    assert_eq!(
        listed[0]["avatar_url"],
        format!("{avatar_url}?v=3"),
        "{listed}"
    );
}

crate::on_both_backends!(upload_and_serve_avatars);
