package org.shira.demo;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtSession;
import android.app.Activity;
import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.os.Bundle;
import android.widget.Button;
import android.widget.ImageView;
import android.widget.LinearLayout;
import android.widget.SeekBar;
import android.widget.TextView;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.shira.core.AdapterBlob;
import org.shira.core.Json;
import org.shira.core.WeightPatcher;

/** Loads the exported style net ONCE with ONNX Runtime and swaps styles by patching its weights in place.
 *
 *  The patchable weights are graph inputs of model.onnx (see docs/MANIFEST.md): the app owns them in direct
 *  ByteBuffers and hands ORT tensors that alias that memory, so a patch reaches the very next run. */
public class MainActivity extends Activity {
    private OrtEnvironment env;
    private OrtSession session;
    private final Map<String, OnnxTensor> weightTensors = new HashMap<>();
    private WeightPatcher patcher;
    private float[] photo; // [1, 3, S, S]
    private int size;
    private ImageView output;
    private TextView status;

    @Override
    protected void onCreate(Bundle state) {
        super.onCreate(state);
        LinearLayout root = new LinearLayout(this);
        root.setOrientation(LinearLayout.VERTICAL);
        output = new ImageView(this);
        status = new TextView(this);
        root.addView(output, new LinearLayout.LayoutParams(768, 768));
        root.addView(status);
        setContentView(root);
        try {
            load(root);
            apply(new LinkedHashMap<>());
        } catch (Exception e) {
            status.setText("could not load the demo: " + e.getMessage());
        }
    }

    private byte[] asset(String name) throws IOException {
        try (InputStream in = getAssets().open(name)) {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buf = new byte[1 << 16];
            for (int n; (n = in.read(buf)) > 0; ) out.write(buf, 0, n);
            return out.toByteArray();
        }
    }

    private void load(LinearLayout root) throws Exception {
        Map<?, ?> manifest = (Map<?, ?>) Json.parse(new String(asset("base/manifest.json"), StandardCharsets.UTF_8));
        String fingerprint = (String) manifest.get("base_fingerprint");
        // weights.safetensors -> one direct buffer the app owns; each placement is a float view of it
        byte[] file = asset("base/weights.safetensors");
        ByteBuffer weights = ByteBuffer.allocateDirect(file.length).order(ByteOrder.LITTLE_ENDIAN);
        weights.put(file).flip();
        long headerLen = weights.getLong(0);
        Map<?, ?> header = (Map<?, ?>) Json.parse(new String(file, 8, (int) headerLen, StandardCharsets.UTF_8));
        env = OrtEnvironment.getEnvironment();
        Map<String, FloatBuffer> buffers = new LinkedHashMap<>();
        Map<String, List<WeightPatcher.Placement>> placements = new LinkedHashMap<>();
        Map<String, long[]> shapes = new HashMap<>();
        for (Map.Entry<?, ?> t : ((Map<?, ?>) manifest.get("tensors")).entrySet()) {
            Map<?, ?> info = (Map<?, ?>) t.getValue();
            long[] torchShape = longs((List<?>) info.get("shape"));
            shapes.put((String) t.getKey(), torchShape);
            List<WeightPatcher.Placement> ps = new ArrayList<>();
            for (Object o : (List<?>) ((Map<?, ?>) info.get("placements")).get("onnxruntime")) {
                Map<?, ?> p = (Map<?, ?>) o;
                String name = (String) p.get("name");
                List<?> offs = (List<?>) ((Map<?, ?>) header.get(name)).get("data_offsets");
                int begin = (int) (8 + headerLen + (Long) offs.get(0)), end = (int) (8 + headerLen + (Long) offs.get(1));
                ByteBuffer slice = weights.duplicate();
                slice.position(begin).limit(end);
                FloatBuffer fb = slice.slice().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer();
                buffers.put(name, fb);
                weightTensors.put(name, OnnxTensor.createTensor(env, fb, longs((List<?>) p.get("shape"))));
                float[] scale = null; // a folded weight (BatchNorm folded at export): MANIFEST.md "Folded weights"
                if (p.get("channel_scale") != null) {
                    List<?> cs = (List<?>) p.get("channel_scale");
                    scale = new float[cs.size()];
                    for (int i = 0; i < scale.length; i++) scale[i] = (float) ((Number) cs.get(i)).doubleValue();
                }
                ps.add(new WeightPatcher.Placement(name, (String) p.get("layout"), torchShape, scale));
            }
            placements.put((String) t.getKey(), ps);
        }
        patcher = new WeightPatcher(buffers, placements);
        OrtSession.SessionOptions opts = new OrtSession.SessionOptions();
        opts.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT);
        session = env.createSession(asset("base/model.onnx"), opts);
        List<String> styles = new ArrayList<>();
        for (String f : getAssets().list("styles")) {
            if (!f.endsWith(".shira")) continue;
            String name = f.substring(0, f.length() - 6);
            patcher.load(name, AdapterBlob.read(asset("styles/" + f), f, fingerprint, shapes)); // validated in full
            styles.add(name);
        }
        Bitmap bmp = BitmapFactory.decodeByteArray(asset("photo.png"), 0, asset("photo.png").length);
        size = bmp.getWidth();
        photo = new float[3 * size * size];
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++) {
                int c = bmp.getPixel(x, y);
                photo[y * size + x] = ((c >> 16) & 255) / 255f;
                photo[size * size + y * size + x] = ((c >> 8) & 255) / 255f;
                photo[2 * size * size + y * size + x] = (c & 255) / 255f;
            }
        Button base = new Button(this);
        base.setText("base");
        base.setOnClickListener(v -> apply(new LinkedHashMap<>()));
        root.addView(base);
        for (String s : styles) {
            Button b = new Button(this);
            b.setText(s);
            b.setOnClickListener(v -> { Map<String, Double> m = new LinkedHashMap<>(); m.put(s, 1.0); apply(m); });
            root.addView(b);
        }
        if (styles.size() >= 2) { // fuse the first two styles with a slider
            SeekBar mix = new SeekBar(this);
            mix.setMax(100);
            mix.setOnSeekBarChangeListener(new SeekBar.OnSeekBarChangeListener() {
                public void onProgressChanged(SeekBar sb, int p, boolean user) {
                    Map<String, Double> m = new LinkedHashMap<>();
                    m.put(styles.get(0), 1 - p / 100.0);
                    m.put(styles.get(1), p / 100.0);
                    apply(m);
                }
                public void onStartTrackingTouch(SeekBar sb) {}
                public void onStopTrackingTouch(SeekBar sb) {}
            });
            root.addView(mix);
        }
    }

    private static long[] longs(List<?> l) {
        long[] out = new long[l.size()];
        for (int i = 0; i < out.length; i++) out[i] = (Long) l.get(i);
        return out;
    }

    private void apply(Map<String, Double> scales) {
        try {
            long t0 = System.nanoTime();
            patcher.fuse(scales); // in place; a refused combination changes nothing
            long t1 = System.nanoTime();
            Map<String, OnnxTensor> feeds = new HashMap<>(weightTensors);
            try (OnnxTensor img = OnnxTensor.createTensor(env, FloatBuffer.wrap(photo), new long[]{1, 3, size, size})) {
                feeds.put("image", img);
                try (OrtSession.Result r = session.run(feeds)) {
                    long t2 = System.nanoTime();
                    float[][][][] out = (float[][][][]) r.get(0).getValue();
                    output.setImageBitmap(toBitmap(out[0]));
                    status.setText(String.format("switch %.2f ms, inference %.1f ms", (t1 - t0) / 1e6, (t2 - t1) / 1e6));
                }
            }
        } catch (Exception e) {
            status.setText("error: " + e.getMessage());
        }
    }

    private Bitmap toBitmap(float[][][] chw) {
        int h = chw[0].length, w = chw[0][0].length;
        int[] px = new int[h * w];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                int r = clamp(chw[0][y][x]), g = clamp(chw[1][y][x]), b = clamp(chw[2][y][x]);
                px[y * w + x] = 0xFF000000 | (r << 16) | (g << 8) | b;
            }
        return Bitmap.createBitmap(px, w, h, Bitmap.Config.ARGB_8888);
    }

    private static int clamp(float v) { return Math.max(0, Math.min(255, Math.round(v * 255))); }
}
