package org.shira.core;

import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;

/** How a bake writes down where each entry of a weight lies in its region (docs/INPLACE.md, bake.json
 *  "positions"): the Java twin of the Python runtime's inplace/layout.py describe, with the same forms tried in the
 *  same order (contiguous, tiles, row_groups, panels), so that both bakers choose the same form for the same
 *  positions; a form is accepted only if it gives every entry's position exactly. Where none fits, the positions
 *  are written as a NumPy .npy file (version 1.0, byte for byte what numpy.save writes). {@link BakedWeights}
 *  reads all of them. */
public final class PositionForms {
    private PositionForms() {}

    /** "contiguous", a form (an ordered map, as bake.json holds it), or null: no formula gives `positions`
     *  (positions[f] = the slot of entry f of a weight of stored `shape`). */
    public static Object describe(int[] positions, long[] shape) {
        int n = positions.length;
        boolean contiguous = true;
        for (int f = 0; f < n && contiguous; f++) contiguous = positions[f] == f;
        if (contiguous) return "contiguous";
        Map<String, Object> tiles = tiles(positions);
        if (tiles != null) return tiles;
        if (shape.length != 2) return null;
        long rows = shape[0], cols = shape[1];
        Map<String, Object> groups = groups(positions, rows, cols);
        if (groups != null) return groups;
        for (long panel : new long[] {16, 8, 32, 4, 64})
            for (long kBlock : new long[] {256, 128, 512, 64, 1024, rows}) {
                TreeSet<Long> aligns = new TreeSet<>();
                for (long a : new long[] {panel, 16, 32, 64}) aligns.add(a);
                for (long align : aligns) {
                    long aligned = (cols + align - 1) / align * align;
                    if (panelsFit(positions, rows, cols, kBlock, panel, aligned)) {
                        Map<String, Object> form = new LinkedHashMap<>();
                        form.put("form", "panels");
                        form.put("rows", rows);
                        form.put("cols", cols);
                        form.put("k_block", kBlock);
                        form.put("panel", panel);
                        form.put("aligned_n", aligned);
                        return form;
                    }
                }
            }
        return null;
    }

    private static Map<String, Object> tiles(int[] positions) {
        int n = positions.length;
        for (int period = 2; period <= 1024; period *= 2) {
            if (n % period != 0) break;
            if (!isPermutation(positions, period)) continue;
            boolean fits = true;
            for (int f = 0; f < n && fits; f++) fits = positions[f] == f / period * period + positions[f % period];
            if (fits) {
                Map<String, Object> form = new LinkedHashMap<>();
                form.put("form", "tiles");
                form.put("period", (long) period);
                form.put("perm", head(positions, period));
                return form;
            }
        }
        return null;
    }

    /** MatMulNBits' packed integers: rows in groups, each row's entries chunk by chunk across its group. */
    private static Map<String, Object> groups(int[] positions, long rows, long cols) {
        for (int chunk : new int[] {16, 32, 64, 128, 256}) {
            if (cols % chunk != 0 || !isPermutation(positions, chunk)) continue;
            for (long group : new long[] {1, 2, 4, 8, 16}) {
                boolean fits = true;
                for (int f = 0; f < positions.length && fits; f++) {
                    long nn = f / cols, k = f % cols, g = nn / group;
                    long inGroup = Math.min(group, rows - g * group);
                    fits = positions[f] == g * group * cols + (k / chunk) * inGroup * chunk + (nn % group) * chunk
                            + positions[(int) (k % chunk)];
                }
                if (fits) {
                    Map<String, Object> form = new LinkedHashMap<>();
                    form.put("form", "row_groups");
                    form.put("rows", rows);
                    form.put("cols", cols);
                    form.put("group", group);
                    form.put("chunk", (long) chunk);
                    form.put("perm", head(positions, chunk));
                    return form;
                }
            }
        }
        return null;
    }

    /** MLAS's SGEMM packing of B [K, N] (BakedWeights.Copy.position's "panels", for every entry). */
    private static boolean panelsFit(int[] positions, long kTotal, long cols, long kBlock, long panel, long aligned) {
        for (int f = 0; f < positions.length; f++) {
            long k = f / cols, n = f % cols, kb = k / kBlock;
            long rows = Math.min(kTotal - kb * kBlock, kBlock);
            if (positions[f] != kb * kBlock * aligned + (n / panel) * rows * panel + (k % kBlock) * panel + n % panel)
                return false;
        }
        return true;
    }

    /** Whether positions[0, k) holds exactly 0 .. k-1 (Python: sorted(positions[:k]) == list(range(k))). */
    private static boolean isPermutation(int[] positions, int k) {
        if (positions.length < k) return false;
        boolean[] seen = new boolean[k];
        for (int i = 0; i < k; i++) {
            int v = positions[i];
            if (v < 0 || v >= k || seen[v]) return false;
            seen[v] = true;
        }
        return true;
    }

    private static List<Long> head(int[] positions, int k) {
        List<Long> out = new ArrayList<>(k);
        for (int i = 0; i < k; i++) out.add((long) positions[i]);
        return out;
    }

    /** Write `values` as a one-dimensional .npy, version 1.0: little-endian uint32 ("<u4"; every value must be
     *  below 2^32) or int64 ("<i8"), the header exactly as numpy.save pads it. */
    public static void writeNpy(File file, int[] values, boolean wide) throws IOException {
        String header = "{'descr': '" + (wide ? "<i8" : "<u4") + "', 'fortran_order': False, 'shape': (" + values.length
                + ",), }";
        StringBuilder h = new StringBuilder(header);
        for (int i = Integer.toString(values.length).length(); i < 21; i++) h.append(' '); // numpy's room to grow
        int hlen = h.length() + 1, pad = 64 - (10 + hlen) % 64;
        for (int i = 0; i < pad; i++) h.append(' ');
        h.append('\n');
        byte[] text = h.toString().getBytes(StandardCharsets.US_ASCII);
        if (text.length > 0xFFFF) throw new IOException(file + ": .npy header too long");
        ByteBuffer out = ByteBuffer.allocate(64 * 1024).order(ByteOrder.LITTLE_ENDIAN);
        try (OutputStream os = new FileOutputStream(file)) {
            out.put(new byte[] {(byte) 0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0}).putShort((short) text.length);
            os.write(out.array(), 0, out.position());
            os.write(text);
            out.clear();
            for (int v : values) {
                if (out.remaining() < 8) { os.write(out.array(), 0, out.position()); out.clear(); }
                if (wide) out.putLong(v & 0xFFFFFFFFL); else out.putInt(v);
            }
            os.write(out.array(), 0, out.position());
        }
    }
}
