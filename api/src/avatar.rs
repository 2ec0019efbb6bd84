//! Avatar images: uploads decoded and re-encoded to a small square PNG, and a
//! generated default for users who have none. Runs on the blocking pool.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, Rgba, RgbaImage, imageops::FilterType};
use uuid::Uuid;

/// Side of every stored avatar, in pixels.
pub const SIZE: u32 = 128;
/// Largest upload accepted.
pub const MAX_UPLOAD: usize = 1024 * 1024;
/// Refuse to even decode images larger than this (decompression bombs).
const MAX_SIDE: u32 = 4096;
const MAX_DECODE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AvatarError {
    #[error("only PNG, JPEG and WebP images are accepted")]
    UnsupportedType,
    #[error("the image could not be decoded: {0}")]
    Undecodable(String),
}

/// Sniffs the format from the bytes (never trusting the client's label),
/// decodes within limits, crops the centre square and scales it to `SIZE`.
pub fn normalise(bytes: &[u8]) -> Result<Vec<u8>, AvatarError> {
    let format = image::guess_format(bytes).map_err(|_| AvatarError::UnsupportedType)?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP
    ) {
        return Err(AvatarError::UnsupportedType);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| AvatarError::Undecodable(e.to_string()))?;
    let side = image.width().min(image.height());
    let (x, y) = ((image.width() - side) / 2, (image.height() - side) / 2);
    let square = image
        .crop_imm(x, y, side, side)
        .resize_exact(SIZE, SIZE, FilterType::Triangle);
    encode_png(&square.to_rgba8())
}

fn encode_png(image: &RgbaImage) -> Result<Vec<u8>, AvatarError> {
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, ImageFormat::Png)
        .map_err(|e| AvatarError::Undecodable(e.to_string()))?;
    Ok(out.into_inner())
}

/// A symmetric 5×5 pattern in a colour, both derived from the user's id:
/// recognisable, stable, and different for different users.
pub fn generated(user_id: Uuid) -> Vec<u8> {
    let bits = user_id.as_u128();
    let colour = Rgba([
        (bits >> 8) as u8 | 0x40,
        (bits >> 16) as u8 | 0x40,
        (bits >> 24) as u8 | 0x40,
        255,
    ]);
    let background = Rgba([240, 240, 240, 255]);
    let cell = SIZE / 5;
    let image = RgbaImage::from_fn(SIZE, SIZE, |x, y| {
        let (cx, cy) = ((x / cell).min(4), (y / cell).min(4));
        let column = cx.min(4 - cx); // mirror: columns 0..=2
        let on = (bits >> (32 + cy * 3 + column)) & 1 == 1;
        if on { colour } else { background }
    });
    encode_png(&image).expect("encoding a generated image cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        RgbaImage::from_pixel(width, height, Rgba([1, 2, 3, 255]))
            .write_to(&mut out, ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn uploads_become_small_squares() {
        let out = normalise(&png(300, 200)).unwrap();
        let image = image::load_from_memory(&out).unwrap();
        assert_eq!((image.width(), image.height()), (SIZE, SIZE));
    }

    #[test]
    fn lies_and_truncations_are_refused() {
        let mut truncated = png(64, 64);
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(
            normalise(&truncated),
            Err(AvatarError::Undecodable(_))
        ));
        let mut lying = b"\x89PNG\r\n\x1a\n".to_vec();
        lying.extend_from_slice(&[0u8; 100]);
        assert!(matches!(
            normalise(&lying),
            Err(AvatarError::Undecodable(_))
        ));
        assert_eq!(
            normalise(b"GIF89a......"),
            Err(AvatarError::UnsupportedType)
        );
        assert_eq!(normalise(b"just text"), Err(AvatarError::UnsupportedType));
    }

    #[test]
    fn generated_avatars_differ_per_user() {
        let (a, b) = (Uuid::now_v7(), Uuid::new_v4());
        assert_eq!(generated(a), generated(a));
        assert_ne!(generated(a), generated(b));
    }
}
