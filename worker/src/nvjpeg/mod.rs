//! JPEG decoding on the GPU through nvJPEG: a batch at a time on the GPU's
//! JPEG engines where it has them (A100, H100, H200), else nvJPEG's hybrid
//! decoder; pictures the batched call refuses are retried one at a time with
//! the hybrid decoder, and what that refuses goes back to the CPU pipeline
//! ([`atelier_pipeline::Batch::decode_on`]).

mod library;

use std::ffi::c_int;
use std::ptr;
use std::sync::Arc;

use atelier_pipeline::JpegDecoder;
use tch::{Device, Kind, Tensor};

pub use library::NvJpegLibrary;
use library::{Image, Status, BACKEND_DEFAULT, BACKEND_HARDWARE, OUTPUT_RGBI, STATUS_SUCCESS};

use atelier_cuda::TORCH_DEFAULT_STREAM;

/// One nvJPEG handle and decode state; one per compute thread and GPU.
#[derive(Debug)]
pub struct NvJpegDecoder {
    library: Arc<NvJpegLibrary>,
    batched: Session,
    /// Hybrid-backend session for one picture at a time, made on first need.
    single: Option<Session>,
    hardware: bool,
    device_index: usize,
    /// The batch size the batched state was initialised for.
    initialised_for: usize,
}

#[derive(Debug)]
struct Session {
    handle: library::Handle,
    state: library::State,
}

impl NvJpegDecoder {
    /// A decoder on `device`; an error (never a panic) without nvJPEG or a GPU.
    pub fn new(device: Device) -> Result<Self, String> {
        let Device::Cuda(device_index) = device else {
            return Err("nvJPEG decodes on a CUDA device, not the cpu".into());
        };
        let library = NvJpegLibrary::load()?;
        set_device(device_index)?;
        let (batched, hardware) = match Session::new(&library, BACKEND_HARDWARE) {
            Ok(session) => (session, true),
            Err(_) => (Session::new(&library, BACKEND_DEFAULT)?, false),
        };
        tracing::info!(
            library = library.path(),
            hardware,
            device = device_index,
            "nvjpeg decoder ready"
        );
        Ok(Self {
            library,
            batched,
            single: None,
            hardware,
            device_index,
            initialised_for: 0,
        })
    }

    /// Whether batches go to the GPU's JPEG engines.
    pub fn hardware(&self) -> bool {
        self.hardware
    }

    fn check(&self, call: &str, status: Status) -> Result<(), String> {
        if status == STATUS_SUCCESS {
            Ok(())
        } else {
            Err(format!(
                "{call} failed: {} ({status})",
                library::status_name(status)
            ))
        }
    }

    /// An empty `[height, width, 3]` byte tensor for `jpeg`, from its header.
    fn output_for(&self, jpeg: &[u8]) -> Result<Tensor, String> {
        let (mut components, mut subsampling) = (0 as c_int, 0 as c_int);
        let (mut widths, mut heights) = ([0 as c_int; 4], [0 as c_int; 4]);
        // SAFETY: the handle is live, `jpeg` outlives the call, and the
        // output arrays have NVJPEG_MAX_COMPONENT entries.
        let status = unsafe {
            (self.library.get_image_info)(
                self.batched.handle,
                jpeg.as_ptr(),
                jpeg.len(),
                &mut components,
                &mut subsampling,
                widths.as_mut_ptr(),
                heights.as_mut_ptr(),
            )
        };
        self.check("nvjpegGetImageInfo", status)?;
        let (width, height) = (i64::from(widths[0]), i64::from(heights[0]));
        if width <= 0 || height <= 0 {
            return Err(format!("nvjpegGetImageInfo says {width}x{height} pixels"));
        }
        Tensor::f_empty(
            [height, width, 3],
            (Kind::Uint8, Device::Cuda(self.device_index)),
        )
        .map_err(|e| e.to_string())
    }

    /// Decodes all of `jpegs` into `outputs` with one batched call.
    fn decode_batch(&mut self, jpegs: &[&[u8]], outputs: &[Tensor]) -> Result<(), String> {
        if self.initialised_for != jpegs.len() {
            // SAFETY: the handle and state are live and belong together.
            let status = unsafe {
                (self.library.decode_batched_initialize)(
                    self.batched.handle,
                    self.batched.state,
                    jpegs.len() as c_int,
                    1,
                    OUTPUT_RGBI,
                )
            };
            self.check("nvjpegDecodeBatchedInitialize", status)?;
            self.initialised_for = jpegs.len();
        }
        let data: Vec<*const u8> = jpegs.iter().map(|j| j.as_ptr()).collect();
        let lengths: Vec<usize> = jpegs.iter().map(|j| j.len()).collect();
        let mut images: Vec<Image> = outputs.iter().map(image_of).collect();
        // SAFETY: `data`, `lengths` and `images` have one entry per picture
        // and outlive the call; each image points at a live device tensor of
        // the size nvjpegGetImageInfo gave, which stays alive (in `outputs`)
        // until work queued after the decode on the same stream has used it.
        let status = unsafe {
            (self.library.decode_batched)(
                self.batched.handle,
                self.batched.state,
                data.as_ptr(),
                lengths.as_ptr(),
                images.as_mut_ptr(),
                TORCH_DEFAULT_STREAM,
            )
        };
        if status != STATUS_SUCCESS {
            // nvJPEG asks for the batched state to be initialised afresh
            // after a failed batch.
            self.initialised_for = 0;
        }
        self.check("nvjpegDecodeBatched", status)
    }

    /// Waits until the decodes queued on torch's stream are done. The
    /// engines may read the compressed bytes after the call returns, and
    /// the batch that owns them is dropped once its tensor is built. It
    /// also waits for the forward pass that tagging left queued on the same
    /// stream (see `tag::predictions`), so with `--gpu-decode` the host
    /// queues batch k+1's forward pass only once batch k's is done; the
    /// rows of batch k are still built while batch k+1 runs.
    fn wait_for_device(&self) -> Result<(), String> {
        atelier_cuda::synchronize_torch_stream()
    }

    /// Decodes one picture with the hybrid decoder.
    fn decode_one(&mut self, jpeg: &[u8], output: &Tensor) -> Result<(), String> {
        if self.single.is_none() {
            self.single = Some(Session::new(&self.library, BACKEND_DEFAULT)?);
        }
        let session = self.single.as_ref().ok_or("no nvJPEG session")?;
        let mut image = image_of(output);
        // SAFETY: as in `decode_batch`, for one picture.
        let status = unsafe {
            (self.library.decode)(
                session.handle,
                session.state,
                jpeg.as_ptr(),
                jpeg.len(),
                OUTPUT_RGBI,
                &mut image,
                TORCH_DEFAULT_STREAM,
            )
        };
        self.check("nvjpegDecode", status)
    }
}

impl JpegDecoder for NvJpegDecoder {
    fn decode(&mut self, jpegs: &[&[u8]]) -> Vec<Result<Tensor, String>> {
        if let Err(error) = set_device(self.device_index) {
            return jpegs.iter().map(|_| Err(error.clone())).collect();
        }
        let outputs: Vec<Result<Tensor, String>> =
            jpegs.iter().map(|j| self.output_for(j)).collect();
        let (ready, tensors): (Vec<&[u8]>, Vec<Tensor>) = jpegs
            .iter()
            .zip(&outputs)
            .filter_map(|(jpeg, output)| output.as_ref().ok().map(|t| (*jpeg, t.shallow_clone())))
            .unzip();
        if !ready.is_empty() {
            if let Err(error) = self
                .decode_batch(&ready, &tensors)
                .and_then(|()| self.wait_for_device())
            {
                tracing::debug!(%error, pictures = ready.len(), "batched decode refused; one at a time");
                let singles: Vec<Result<(), String>> = ready
                    .iter()
                    .zip(&tensors)
                    .map(|(jpeg, tensor)| self.decode_one(jpeg, tensor))
                    .collect();
                if let Err(error) = self.wait_for_device() {
                    return jpegs.iter().map(|_| Err(error.clone())).collect();
                }
                let mut singles = singles.into_iter();
                return outputs
                    .into_iter()
                    .map(|output| {
                        let output = output?;
                        singles.next().unwrap_or(Err("no result".into()))?;
                        Ok(output)
                    })
                    .collect();
            }
        }
        outputs
    }
}

impl Session {
    fn new(library: &NvJpegLibrary, backend: c_int) -> Result<Self, String> {
        let mut handle: library::Handle = ptr::null_mut();
        // SAFETY: null allocators ask nvJPEG for its defaults; `handle` is
        // written only on success.
        let status = unsafe {
            (library.create_ex)(backend, ptr::null_mut(), ptr::null_mut(), 0, &mut handle)
        };
        if status != STATUS_SUCCESS {
            return Err(format!(
                "nvjpegCreateEx (backend {backend}) failed: {} ({status}) with {}",
                library::status_name(status),
                library.path()
            ));
        }
        let mut state: library::State = ptr::null_mut();
        // SAFETY: `handle` was just created.
        let status = unsafe { (library.state_create)(handle, &mut state) };
        if status != STATUS_SUCCESS {
            // SAFETY: `handle` is live and has no states.
            unsafe { (library.destroy)(handle) };
            return Err(format!(
                "nvjpegJpegStateCreate failed: {} ({status})",
                library::status_name(status)
            ));
        }
        Ok(Self { handle, state })
    }

    fn close(&mut self, library: &NvJpegLibrary) {
        // SAFETY: both are live and destroyed once, the state first.
        unsafe {
            (library.state_destroy)(self.state);
            (library.destroy)(self.handle);
        }
    }
}

impl Drop for NvJpegDecoder {
    fn drop(&mut self) {
        let library = Arc::clone(&self.library);
        self.batched.close(&library);
        if let Some(single) = &mut self.single {
            single.close(&library);
        }
    }
}

/// An nvjpegImage_t writing interleaved RGB into `tensor` (`[h, w, 3]` bytes).
fn image_of(tensor: &Tensor) -> Image {
    let width = tensor.size().get(1).copied().unwrap_or(0);
    let mut image = Image {
        channel: [ptr::null_mut(); 4],
        pitch: [0; 4],
    };
    image.channel[0] = tensor.data_ptr().cast();
    image.pitch[0] = (width * 3) as usize;
    image
}

/// The device is the thread's current context, which nvJPEG's own runtime
/// then uses too.
fn set_device(index: usize) -> Result<(), String> {
    match atelier_cuda::set_device(index) {
        Some(Ok(())) => Ok(()),
        Some(Err(code)) => Err(format!(
            "cudaSetDevice({index}) failed with CUDA error {code}"
        )),
        None => Err("the CUDA runtime is not loaded (libtorch without CUDA)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_gpu_the_decoder_is_an_error_not_a_panic() {
        let error = NvJpegDecoder::new(Device::Cpu).unwrap_err();
        assert!(error.contains("CUDA device"), "{error}");
        if tch::Cuda::is_available() {
            return;
        }
        let error = NvJpegDecoder::new(Device::Cuda(0)).unwrap_err();
        assert!(
            error.contains("nvJPEG") || error.contains("nvjpeg") || error.contains("CUDA"),
            "{error}"
        );
    }

    #[test]
    fn on_a_gpu_nvjpeg_decodes_as_libjpeg_does() {
        if !tch::Cuda::is_available() {
            return;
        }
        let (width, height) = (96usize, 64usize);
        let pixels: Vec<u8> = (0..width * height * 3)
            .map(|i| ((i / 3) % width * 2) as u8)
            .collect();
        let jpeg = atelier_catalog::encode_jpeg(&pixels, width, height, 95).unwrap();
        let mut decoder = NvJpegDecoder::new(Device::Cuda(0)).unwrap();
        let on_gpu = decoder.decode(&[&jpeg, &jpeg]);
        let on_cpu = atelier_pipeline::CpuJpegDecoder
            .decode(&[&jpeg])
            .remove(0)
            .unwrap();
        for image in on_gpu {
            let image = image.unwrap().to_device(Device::Cpu);
            assert_eq!(image.size(), vec![height as i64, width as i64, 3]);
            let diff = (image.to_kind(Kind::Float) - on_cpu.to_kind(Kind::Float)).abs();
            assert!(diff.mean(Kind::Float).double_value(&[]) < 2.0);
        }
    }
}
