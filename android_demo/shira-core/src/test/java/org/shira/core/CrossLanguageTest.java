package org.shira.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.junit.Test;

/** The Java core against the Python packer's test vectors (tests/vectors) and the Python runtime's bytes. */
public class CrossLanguageTest {
    static final File VECTORS = new File(System.getProperty("shira.vectors", "../../tests/vectors"));

    static Object json(File f) throws IOException {
        return Json.parse(new String(Files.readAllBytes(f.toPath()), StandardCharsets.UTF_8));
    }

    @Test
    public void everyVectorDecodesToItsJsonOrIsRefusedWithItsError() throws Exception {
        File[] blobs = VECTORS.listFiles((d, n) -> n.endsWith(".shira"));
        assertTrue("no vectors in " + VECTORS.getAbsolutePath(), blobs != null && blobs.length >= 8);
        int decoded = 0, refused = 0;
        for (File blob : blobs) {
            String stem = blob.getName().replace(".shira", "");
            Map<?, ?> expect = (Map<?, ?>) json(new File(VECTORS, stem + ".json"));
            byte[] bytes = Files.readAllBytes(blob.toPath());
            if (expect.containsKey("error")) {
                try {
                    AdapterBlob.read(bytes, blob.getName(), null, null);
                    fail(blob.getName() + " should be refused");
                } catch (AdapterFormatException e) {
                    assertTrue(e.getMessage(), e.getMessage().startsWith(blob.getName() + ": "));
                    assertTrue(e.getMessage(), e.getMessage().contains((String) expect.get("error")));
                    refused++;
                }
                continue;
            }
            AdapterBlob a = AdapterBlob.read(bytes, blob.getName(), (String) expect.get("base_fingerprint"), null);
            assertEquals(expect.get("name"), a.name);
            Map<?, ?> tensors = (Map<?, ?>) expect.get("tensors");
            assertEquals(tensors.keySet(), a.tensors.keySet());
            for (Map.Entry<?, ?> e : tensors.entrySet()) {
                Map<?, ?> t = (Map<?, ?>) e.getValue();
                AdapterBlob.Tensor got = a.tensors.get(e.getKey());
                assertEquals(t.get("index_coding"), got.indexCoding);
                assertEquals(t.get("value_coding"), got.valueCoding);
                List<?> idx = (List<?>) t.get("indices"), vals = (List<?>) t.get("values");
                long[] wantIdx = new long[idx.size()];
                float[] wantVals = new float[vals.size()];
                for (int i = 0; i < wantIdx.length; i++) {
                    wantIdx[i] = (Long) idx.get(i);
                    wantVals[i] = (float) ((Number) vals.get(i)).doubleValue();
                }
                assertArrayEquals(blob.getName(), wantIdx, got.indices);
                for (int i = 0; i < wantVals.length; i++)  // bit for bit
                    assertEquals(blob.getName() + " value " + i, Float.floatToRawIntBits(wantVals[i]),
                            Float.floatToRawIntBits(got.values[i]));
            }
            decoded++;
        }
        assertTrue(decoded >= 8 && refused >= 2);
    }

    @Test
    public void wrongBaseAndFlippedBitsAreRefused() throws Exception {
        byte[] good = Files.readAllBytes(new File(VECTORS, "elias_fano_f16.shira").toPath());
        try {
            AdapterBlob.read(good, "x.shira", "sha256:" + "00".repeat(32), null);
            fail("wrong base accepted");
        } catch (AdapterFormatException e) {
            assertTrue(e.getMessage().contains("another base"));
        }
        int refused = 0;
        for (int pos = 0; pos < good.length; pos += 7) { // any single flipped bit is caught (CRCs, parser)
            byte[] bad = good.clone();
            bad[pos] ^= 0x04;
            try {
                AdapterBlob.read(bad, "flip.shira", null, null);
            } catch (AdapterFormatException e) {
                refused++;
            }
        }
        int tries = (good.length + 6) / 7;
        // flips inside JSON whitespace padding can be harmless; everything else must be refused
        assertTrue(refused + " of " + tries, refused >= tries * 9 / 10);
    }

    static FloatBuffer direct(List<?> bits) {
        FloatBuffer fb = ByteBuffer.allocateDirect(bits.size() * 4).order(ByteOrder.nativeOrder()).asFloatBuffer();
        for (int i = 0; i < bits.size(); i++) fb.put(i, Float.intBitsToFloat((int) (long) (Long) bits.get(i)));
        return fb;
    }

    static int[] bitsOf(FloatBuffer fb) {
        int[] out = new int[fb.capacity()];
        for (int i = 0; i < out.length; i++) out[i] = Float.floatToRawIntBits(fb.get(i));
        return out;
    }

    static int[] ints(List<?> bits) {
        int[] out = new int[bits.size()];
        for (int i = 0; i < out.length; i++) out[i] = (int) (long) (Long) bits.get(i);
        return out;
    }

    @Test
    public void patcherReproducesThePythonRuntimeByteForByteAndResetsExactly() throws Exception {
        PatchVectors v = new PatchVectors();
        for (int s = 1; s < v.steps.size(); s++) {
            v.patcher.fuse(v.scales(s), v.rule(s));
            for (String b : v.buffers.keySet())
                assertArrayEquals("step " + s + " " + v.scales(s) + " buffer " + b, v.expected(s, b), bitsOf(v.buffers.get(b)));
        }
        assertEquals(0, v.patcher.patchedEntries()); // the last step is {}: the base, bit for bit (checked above)
    }

    @Test
    public void aRefusedCombinationLeavesTheWeightsUntouched() throws Exception {
        File dir = new File(VECTORS, "patch");
        Map<?, ?> c = (Map<?, ?>) json(new File(dir, "steps.json"));
        Map<?, ?> first = (Map<?, ?>) ((Map<?, ?>) ((List<?>) c.get("steps")).get(0)).get("buffers");
        Map<String, FloatBuffer> buffers = new LinkedHashMap<>();
        for (Map.Entry<?, ?> e : first.entrySet()) buffers.put((String) e.getKey(), direct((List<?>) e.getValue()));
        Map<String, List<WeightPatcher.Placement>> placements = new LinkedHashMap<>();
        placements.put("fc.weight", Arrays.asList(new WeightPatcher.Placement("fc_T", "transpose2d", new long[]{12, 10})));
        placements.put("conv.weight", Arrays.asList(new WeightPatcher.Placement("conv_OHWI", "channels_last", new long[]{4, 3, 3, 3})));
        placements.put("dw.weight", Arrays.asList(new WeightPatcher.Placement("dw_HWC", "transpose2d", new long[]{4, 1, 3, 3},
                new float[]{1f, 1f, 1f, 1f})));
        WeightPatcher patcher = new WeightPatcher(buffers, placements);
        File f = new File(dir, "a.shira");
        patcher.load("a", AdapterBlob.read(Files.readAllBytes(f.toPath()), "a.shira", null, null));
        Map<String, Double> ok = new LinkedHashMap<>();
        ok.put("a", 1.0);
        patcher.fuse(ok);
        int[] before = bitsOf(buffers.get("fc_T"));
        Map<String, Double> huge = new LinkedHashMap<>();
        huge.put("a", 1e300);
        try {
            patcher.fuse(huge);
            fail("an overflowing scale was accepted");
        } catch (AdapterFormatException e) {
            assertTrue(e.getMessage().contains("non-finite"));
        }
        assertArrayEquals(before, bitsOf(buffers.get("fc_T")));
        assertNotEquals(0, patcher.patchedEntries());
    }

    @Test
    public void quantizedPatcherReproducesThePythonRuntimeByteForByte() throws Exception {
        File dir = new File(VECTORS, "patch_quant");
        Map<?, ?> c = (Map<?, ?>) json(new File(dir, "steps.json"));
        List<?> steps = (List<?>) c.get("steps");
        Map<?, ?> first = (Map<?, ?>) ((Map<?, ?>) steps.get(0)).get("buffers");
        Map<String, java.nio.ByteBuffer> bytes = new LinkedHashMap<>();
        for (Map.Entry<?, ?> e : first.entrySet()) {
            List<?> l = (List<?>) e.getValue();
            java.nio.ByteBuffer b = java.nio.ByteBuffer.allocateDirect(l.size());
            for (int i = 0; i < l.size(); i++) b.put(i, (byte) (long) (Long) l.get(i));
            bytes.put((String) e.getKey(), b);
        }
        Map<String, List<WeightPatcher.Placement>> placements = new LinkedHashMap<>();
        for (Map.Entry<?, ?> e : ((Map<?, ?>) c.get("placements")).entrySet()) {
            Map<?, ?> p = (Map<?, ?>) e.getValue();
            List<?> sh = (List<?>) p.get("torch_shape");
            List<?> sc = (List<?>) p.get("scales");
            float[] scales = new float[sc.size()];
            for (int i = 0; i < scales.length; i++) scales[i] = (float) ((Number) sc.get(i)).doubleValue();
            WeightPatcher.Quant q = new WeightPatcher.Quant((int) (long) (Long) p.get("bits"),
                    (int) (long) (Long) p.get("block"), scales, Boolean.TRUE.equals(p.get("signed")));
            long[] shape = new long[sh.size()]; // [N, K], or a conv's [N, C, kh, kw]
            for (int i = 0; i < shape.length; i++) shape[i] = (Long) sh.get(i);
            placements.put((String) e.getKey(), Arrays.asList(new WeightPatcher.Placement((String) p.get("buffer"),
                    shape, q)));
        }
        WeightPatcher patcher = new WeightPatcher(new LinkedHashMap<>(), bytes, placements);
        for (Map.Entry<?, ?> e : ((Map<?, ?>) c.get("adapters")).entrySet()) {
            File f = new File(dir, (String) e.getValue());
            patcher.load((String) e.getKey(), AdapterBlob.read(Files.readAllBytes(f.toPath()), f.getName(), null, null));
        }
        for (int s = 1; s < steps.size(); s++) {
            Map<?, ?> step = (Map<?, ?>) steps.get(s);
            Map<String, Double> scales = new LinkedHashMap<>();
            for (Map.Entry<?, ?> e : ((Map<?, ?>) step.get("scales")).entrySet())
                scales.put((String) e.getKey(), ((Number) e.getValue()).doubleValue());
            patcher.fuse(scales, (String) step.get("rule"));
            assertEquals("step " + s + " clamped", (long) (Long) step.get("clamped"), patcher.clamped());
            for (Map.Entry<?, ?> e : ((Map<?, ?>) step.get("buffers")).entrySet()) {
                List<?> want = (List<?>) e.getValue();
                java.nio.ByteBuffer got = bytes.get((String) e.getKey());
                for (int i = 0; i < want.size(); i++)
                    assertEquals("step " + s + " " + scales + " " + e.getKey() + "[" + i + "]",
                            (long) (Long) want.get(i), got.get(i) & 0xFF);
            }
        }
        assertEquals(0, patcher.patchedEntries());
    }
}
