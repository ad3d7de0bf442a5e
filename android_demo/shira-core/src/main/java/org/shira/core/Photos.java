package org.shira.core;

/** Pixels in and out of the style net: any photo (not only a square one) -> a centred square crop resized to the
 *  net's input, as [3, size, size] floats in [0, 1]; the net's output -> ARGB pixels. Plain Java so the host
 *  tests check the exact arithmetic the app runs. */
public final class Photos {
    private Photos() {}

    /** `argb`: w*h pixels, row-major (Bitmap.getPixels). The largest centred square is cropped and resampled
     *  bilinearly (pixel centres aligned) to size x size. */
    public static float[] squareChw(int[] argb, int w, int h, int size) {
        if (w < 1 || h < 1 || argb.length != w * h) throw new IllegalArgumentException("need " + w + "x" + h + " pixels, got " + argb.length);
        if (size < 1) throw new IllegalArgumentException("size must be positive");
        int side = Math.min(w, h), x0 = (w - side) / 2, y0 = (h - side) / 2;
        float[] out = new float[3 * size * size];
        double step = (double) side / size;
        for (int y = 0; y < size; y++) {
            double sy = Math.max(0, Math.min(side - 1, (y + 0.5) * step - 0.5));
            int ya = (int) sy, yb = Math.min(side - 1, ya + 1);
            double fy = sy - ya;
            for (int x = 0; x < size; x++) {
                double sx = Math.max(0, Math.min(side - 1, (x + 0.5) * step - 0.5));
                int xa = (int) sx, xb = Math.min(side - 1, xa + 1);
                double fx = sx - xa;
                int p00 = argb[(y0 + ya) * w + x0 + xa], p01 = argb[(y0 + ya) * w + x0 + xb];
                int p10 = argb[(y0 + yb) * w + x0 + xa], p11 = argb[(y0 + yb) * w + x0 + xb];
                for (int c = 0; c < 3; c++) {
                    int shift = 16 - 8 * c;
                    double top = ((p00 >> shift) & 255) * (1 - fx) + ((p01 >> shift) & 255) * fx;
                    double bottom = ((p10 >> shift) & 255) * (1 - fx) + ((p11 >> shift) & 255) * fx;
                    out[c * size * size + y * size + x] = (float) ((top * (1 - fy) + bottom * fy) / 255.0);
                }
            }
        }
        return out;
    }

    /** [3, size, size] floats -> opaque ARGB pixels, each channel clamped to [0, 1] and rounded to 8 bits. */
    public static int[] toArgb(float[] chw, int size) {
        if (chw.length != 3 * size * size) throw new IllegalArgumentException("need 3x" + size + "x" + size + " floats, got " + chw.length);
        int n = size * size;
        int[] px = new int[n];
        for (int i = 0; i < n; i++) px[i] = 0xFF000000 | (byte8(chw[i]) << 16) | (byte8(chw[n + i]) << 8) | byte8(chw[2 * n + i]);
        return px;
    }

    static int byte8(float v) {
        if (!(v > 0)) return 0; // NaN and negatives -> 0
        return v >= 1 ? 255 : (int) Math.floor(v * 255 + 0.5);
    }
}
