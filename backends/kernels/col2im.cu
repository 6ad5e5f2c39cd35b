// col2im as a GATHER: the adjoint of im2col, one thread per image pixel (n, c, y, x), grid-stride loop.
//
// Layouts (both contiguous): cols (N, C, KH, KW, OH, OW) -> img (N, C, H, W); stride (sy, sx), padding (ph, pw),
// dilation (dy, dx): tap (ky, kx) of window (oy, ox) covers padded pixel (oy * sy + ky * dy, ox * sx + kx * dx).
// Each thread sums every column entry whose window covers its pixel, in a fixed order (ky outer, kx inner),
// and writes its pixel exactly once: no atomics, no races, and the same bits on every run and every launch
// shape. Sizes are 32-bit; flat offsets are computed in 64 bits so large batches do not overflow.

template <typename T>
__device__ void col2im_gather(const T* __restrict__ cols, T* __restrict__ img,
                              int n, int c, int h, int w, int kh, int kw, int oh, int ow,
                              int sy, int sx, int ph, int pw, int dy, int dx)
{
    const long long total = (long long)n * c * h * w;
    const long long plane_cols = (long long)kh * kw * oh * ow;  // column entries per (n, c) plane
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const int x = (int)(i % w);
        const int y = (int)((i / w) % h);
        const T* plane = cols + (i / ((long long)h * w)) * plane_cols;
        const int py = y + ph;  // pixel position in the padded image
        const int px = x + pw;
        T acc = T(0);
        // Tap ky covers this pixel from window row oy = (py - ky * dy) / sy when that divides exactly and is
        // below oh; ky * dy only grows, so the loop stops once it passes py (likewise for kx).
        for (int ky = 0; ky < kh && ky * dy <= py; ++ky) {
            const int ty = py - ky * dy;
            if (ty % sy != 0 || ty / sy >= oh) continue;
            const int oy = ty / sy;
            for (int kx = 0; kx < kw && kx * dx <= px; ++kx) {
                const int tx = px - kx * dx;
                if (tx % sx != 0 || tx / sx >= ow) continue;
                acc += plane[((long long)(ky * kw + kx) * oh + oy) * ow + tx / sx];
            }
        }
        img[i] = acc;
    }
}

extern "C" __global__ void col2im_gather_f32(const float* __restrict__ cols, float* __restrict__ img,
                                             int n, int c, int h, int w, int kh, int kw, int oh, int ow,
                                             int sy, int sx, int ph, int pw, int dy, int dx)
{
    col2im_gather<float>(cols, img, n, c, h, w, kh, kw, oh, ow, sy, sx, ph, pw, dy, dx);
}

extern "C" __global__ void col2im_gather_f64(const double* __restrict__ cols, double* __restrict__ img,
                                             int n, int c, int h, int w, int kh, int kw, int oh, int ow,
                                             int sy, int sx, int ph, int pw, int dy, int dx)
{
    col2im_gather<double>(cols, img, n, c, h, w, kh, kw, oh, ow, sy, sx, ph, pw, dy, dx);
}
