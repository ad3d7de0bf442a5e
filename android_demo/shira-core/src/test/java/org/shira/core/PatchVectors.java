package org.shira.core;

import java.io.File;
import java.nio.FloatBuffer;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** tests/vectors/patch loaded: its buffers at their base values, a patcher over them with every adapter loaded,
 *  and the steps (scales, rule, and the Python runtime's bits of every buffer after each). */
final class PatchVectors {
    final Map<String, FloatBuffer> buffers = new LinkedHashMap<>();
    final WeightPatcher patcher;
    final List<?> steps;

    PatchVectors() throws Exception {
        File dir = new File(CrossLanguageTest.VECTORS, "patch");
        Map<?, ?> c = (Map<?, ?>) CrossLanguageTest.json(new File(dir, "steps.json"));
        steps = (List<?>) c.get("steps");
        Map<?, ?> first = (Map<?, ?>) ((Map<?, ?>) steps.get(0)).get("buffers");
        for (Map.Entry<?, ?> e : first.entrySet())
            buffers.put((String) e.getKey(), CrossLanguageTest.direct((List<?>) e.getValue()));
        Map<String, List<WeightPatcher.Placement>> placements = new LinkedHashMap<>();
        for (Map.Entry<?, ?> e : ((Map<?, ?>) c.get("placements")).entrySet()) {
            Map<?, ?> p = (Map<?, ?>) e.getValue();
            List<?> sh = (List<?>) p.get("torch_shape");
            long[] shape = new long[sh.size()];
            for (int i = 0; i < shape.length; i++) shape[i] = (Long) sh.get(i);
            List<WeightPatcher.Placement> l = new ArrayList<>();
            float[] scale = null;
            if (p.get("channel_scale") != null) {
                List<?> cs = (List<?>) p.get("channel_scale");
                scale = new float[cs.size()];
                for (int i = 0; i < scale.length; i++) scale[i] = (float) ((Number) cs.get(i)).doubleValue();
            }
            l.add(new WeightPatcher.Placement((String) p.get("buffer"), (String) p.get("layout"), shape, scale));
            placements.put((String) e.getKey(), l);
        }
        patcher = new WeightPatcher(buffers, placements);
        for (Map.Entry<?, ?> e : ((Map<?, ?>) c.get("adapters")).entrySet()) {
            File f = new File(dir, (String) e.getValue());
            patcher.load((String) e.getKey(), AdapterBlob.read(Files.readAllBytes(f.toPath()), f.getName(), null, null));
        }
    }

    Map<String, Double> scales(int step) {
        Map<String, Double> out = new LinkedHashMap<>();
        for (Map.Entry<?, ?> e : ((Map<?, ?>) ((Map<?, ?>) steps.get(step)).get("scales")).entrySet())
            out.put((String) e.getKey(), ((Number) e.getValue()).doubleValue());
        return out;
    }

    String rule(int step) { return (String) ((Map<?, ?>) steps.get(step)).get("rule"); }

    /** The Python runtime's bits of `buffer` after `step`. */
    int[] expected(int step, String buffer) {
        return CrossLanguageTest.ints((List<?>) ((Map<?, ?>) ((Map<?, ?>) steps.get(step)).get("buffers")).get(buffer));
    }
}
