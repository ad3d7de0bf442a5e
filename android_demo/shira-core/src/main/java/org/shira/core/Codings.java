package org.shira.core;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;

/** Index and value codings of FORMAT.md §4-§5. Decoders throw IllegalArgumentException with a short reason. */
final class Codings {
    static final List<String> INDEX = Arrays.asList("flat-u32", "elias-fano", "bitmap", "rowcol", "seed");
    static final List<String> VALUE = Arrays.asList("f32", "f16", "bf16", "int8", "int8-row");

    private Codings() {}

    static int dtypeSize(String dt) {
        switch (dt) {
            case "F64": case "I64": case "U64": return 8;
            case "F32": case "U32": case "I32": return 4;
            case "F16": case "BF16": case "U16": case "I16": return 2;
            case "U8": case "I8": case "BOOL": return 1;
            default: return -1;
        }
    }

    static String valueDtype(String coding) {
        switch (coding) {
            case "f32": return "F32";
            case "f16": return "F16";
            case "bf16": return "BF16";
            default: return "I8";
        }
    }

    static long numel(long[] shape) {
        long n = 1;
        for (long s : shape) n *= s;
        return n;
    }

    static long cols(long[] shape) { return numel(shape) / shape[0]; }

    private static ByteBuffer le(byte[] b) { return ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN); }

    /** LSB-first bit stream of exactly nbits, checking its byte length and zero padding. */
    private static boolean[] bits(byte[] b, int from, int len, long nbits) {
        if (len != (nbits + 7) / 8) throw new IllegalArgumentException("bit stream of " + len + " bytes, expected " + (nbits + 7) / 8);
        boolean[] out = new boolean[(int) nbits];
        for (long i = 0; i < (long) len * 8; i++) {
            boolean bit = ((b[from + (int) (i >>> 3)] >> (i & 7)) & 1) != 0;
            if (i < nbits) out[(int) i] = bit;
            else if (bit) throw new IllegalArgumentException("nonzero padding bits");
        }
        return out;
    }

    static int efLowBits(long numel, long nnz) {
        if (nnz == 0) return 0;
        int l = 0;
        while (l < 62 && (nnz << (l + 1)) <= numel) l++;
        return l;
    }

    static long[] decodeIndices(String coding, Map<?, ?> params, byte[] buf, int nnz, long[] shape) {
        long numel = numel(shape);
        long[] idx;
        switch (coding) {
            case "flat-u32": {
                ByteBuffer bb = le(buf);
                idx = new long[buf.length / 4];
                for (int i = 0; i < idx.length; i++) idx[i] = bb.getInt(4 * i) & 0xFFFFFFFFL;
                break;
            }
            case "elias-fano": {
                Object lo = params.get("low_bits");
                if (!(lo instanceof Long)) throw new IllegalArgumentException("missing low_bits");
                int low = (int) (long) (Long) lo;
                if (low != efLowBits(numel, nnz)) throw new IllegalArgumentException("low_bits " + low + " is not floor(log2(numel/nnz))");
                long highBits = nnz + ((numel - 1) >> low) + 1;
                int loBytes = (int) (((long) nnz * low + 7) / 8), hiBytes = (int) ((highBits + 7) / 8);
                if (buf.length != loBytes + hiBytes)
                    throw new IllegalArgumentException(buf.length + " bytes, Elias-Fano of " + nnz + " in " + numel + " needs " + (loBytes + hiBytes));
                long[] lows = new long[nnz];
                if (low > 0) {
                    boolean[] lb = bits(buf, 0, loBytes, (long) nnz * low);
                    for (int i = 0; i < nnz; i++)
                        for (int k = 0; k < low; k++) if (lb[i * low + k]) lows[i] |= 1L << k;
                }
                boolean[] hb = bits(buf, loBytes, hiBytes, highBits);
                int count = 0;
                for (boolean x : hb) if (x) count++;
                if (count != nnz) throw new IllegalArgumentException("high stream holds " + count + " entries, header says " + nnz);
                idx = new long[nnz];
                int i = 0;
                for (int p = 0; p < hb.length; p++) if (hb[p]) { idx[i] = ((long) (p - i) << low) | lows[i]; i++; }
                break;
            }
            case "bitmap": {
                boolean[] bm = bits(buf, 0, buf.length, numel);
                int count = 0;
                for (boolean x : bm) if (x) count++;
                idx = new long[count];
                int i = 0;
                for (int p = 0; p < bm.length; p++) if (bm[p]) idx[i++] = p;
                break;
            }
            case "rowcol": {
                ByteBuffer bb = le(buf);
                int n = buf.length / 4;
                long[] w = new long[n];
                for (int i = 0; i < n; i++) w[i] = bb.getInt(4 * i) & 0xFFFFFFFFL;
                if (n < 3 || n != 3 + w[0] + w[1] || w[2] > 1) throw new IllegalArgumentException("malformed rowcol header");
                long r = shape[0], c = cols(shape);
                for (int k = 1; k < w[0] + w[1]; k++)
                    if (k != w[0] && w[3 + k] <= w[2 + k]) throw new IllegalArgumentException("rows and columns must be strictly increasing");
                if ((w[0] > 0 && c > nnz / w[0]) || (w[1] > 0 && r > nnz / w[1])) // w0*c > nnz, without overflow
                    throw new IllegalArgumentException(w[0] + " rows and " + w[1] + " columns hold more than nnz = " + nnz + " entries");
                TreeSet<Long> set = new TreeSet<>();
                for (int k = 0; k < w[0]; k++) {
                    long row = w[3 + k];
                    if (row >= r) throw new IllegalArgumentException("row or column out of range");
                    for (long j = 0; j < c; j++) set.add(row * c + j);
                }
                for (int k = 0; k < w[1]; k++) {
                    long col = w[3 + (int) w[0] + k];
                    if (col >= c) throw new IllegalArgumentException("row or column out of range");
                    for (long j = 0; j < r; j++) set.add(j * c + col);
                }
                if (w[2] == 1) for (long d = 0; d < Math.min(r, c); d++) set.add(d * c + d);
                idx = new long[set.size()];
                int i = 0;
                for (long v : set) idx[i++] = v;
                break;
            }
            case "seed": {
                Object s = params.get("seed");
                if (!(s instanceof String)) throw new IllegalArgumentException("seed must be a decimal string");
                long seed;
                try {
                    seed = Long.parseUnsignedLong((String) s);
                } catch (NumberFormatException e) {
                    throw new IllegalArgumentException("bad seed " + s);
                }
                idx = seededIndices(seed, numel, nnz);
                break;
            }
            default: throw new IllegalArgumentException("unknown index coding " + coding);
        }
        if (idx.length != nnz) throw new IllegalArgumentException("decoded " + idx.length + " indices, header says " + nnz);
        for (int i = 1; i < idx.length; i++)
            if (idx[i] <= idx[i - 1]) throw new IllegalArgumentException("indices are not strictly increasing (unsorted or duplicated)");
        if (nnz > 0 && (idx[0] < 0 || idx[nnz - 1] >= numel))
            throw new IllegalArgumentException("index " + idx[nnz - 1] + " out of range for shape " + Arrays.toString(shape));
        return idx;
    }

    /** SplitMix64 keys; the count positions with the smallest (unsigned key, position), increasing (§4 seed). */
    static long[] seededIndices(long seed, long numel, int count) {
        if (count < 0 || count > numel) throw new IllegalArgumentException("count outside [0, numel]");
        int n = (int) numel;
        long[] flipped = new long[n]; // key ^ MIN_VALUE: signed order of these = unsigned order of the keys
        for (int f = 0; f < n; f++) {
            long z = seed + (f + 1L) * 0x9E3779B97F4A7C15L;
            z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
            z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
            flipped[f] = (z ^ (z >>> 31)) ^ Long.MIN_VALUE;
        }
        if (count == 0) return new long[0];
        long[] sorted = flipped.clone();
        Arrays.sort(sorted);
        long kth = sorted[count - 1];
        int below = 0;
        for (long k : flipped) if (k < kth) below++;
        long[] out = new long[count];
        int i = 0, ties = count - below;
        for (int f = 0; f < n; f++) {
            if (flipped[f] < kth) out[i++] = f;
            else if (flipped[f] == kth && ties > 0) { out[i++] = f; ties--; }
        }
        return out;
    }

    static float[] decodeValues(String coding, Map<?, ?> params, byte[] buf, byte[] scales, long[] idx, long[] shape) {
        ByteBuffer bb = le(buf);
        int n = idx.length;
        float[] v = new float[n];
        switch (coding) {
            case "f32":
                for (int i = 0; i < n; i++) v[i] = bb.getFloat(4 * i);
                return v;
            case "f16":
                for (int i = 0; i < n; i++) v[i] = halfToFloat(bb.getShort(2 * i));
                return v;
            case "bf16":
                for (int i = 0; i < n; i++) v[i] = Float.intBitsToFloat((bb.getShort(2 * i) & 0xFFFF) << 16);
                return v;
            case "int8": {
                Object s = params.get("scale");
                if (!(s instanceof Number)) throw new IllegalArgumentException("bad int8 scale " + s);
                float scale = (float) ((Number) s).doubleValue();
                if (!Float.isFinite(scale) || scale < 0) throw new IllegalArgumentException("bad int8 scale " + s);
                for (int i = 0; i < n; i++) v[i] = (float) buf[i] * scale;
                return v;
            }
            case "int8-row": {
                long r = shape[0], c = cols(shape);
                ByteBuffer sb = le(scales);
                float[] rs = new float[(int) r];
                for (int k = 0; k < r; k++) {
                    rs[k] = sb.getFloat(4 * k);
                    if (!Float.isFinite(rs[k]) || rs[k] < 0)
                        throw new IllegalArgumentException("int8-row needs " + r + " finite non-negative row scales");
                }
                for (int i = 0; i < n; i++) v[i] = (float) buf[i] * rs[(int) (idx[i] / c)];
                return v;
            }
            default: throw new IllegalArgumentException("unknown value coding " + coding);
        }
    }

    /** IEEE-754 binary16 -> binary32, exact (subnormals, inf and NaN included). */
    static float halfToFloat(short h) {
        int bits = h & 0xFFFF, sign = (bits >>> 15) << 31, exp = (bits >>> 10) & 0x1F, mant = bits & 0x3FF;
        if (exp == 0x1F) return Float.intBitsToFloat(sign | 0x7F800000 | (mant << 13));
        if (exp == 0) {
            float f = mant * 0x1p-24f; // subnormal: exact in binary32
            return sign != 0 ? -f : f;
        }
        return Float.intBitsToFloat(sign | ((exp + 112) << 23) | (mant << 13));
    }
}
