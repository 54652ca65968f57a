-- neurons whose top examples are mostly base64: the 8 tokens around the max are base64 characters
SELECT model_id, layer, neuron, site,
       avg(CASE WHEN regexp_full_match(
               replace(array_to_string(tokens[greatest(max_pos - 3, 1):max_pos + 5], ''), chr(10), ''),
               '[A-Za-z0-9+/=]{12,}') THEN 1 ELSE 0 END) AS base64_share
FROM examples WHERE kind = 'top'
GROUP BY ALL HAVING base64_share >= 0.5
ORDER BY base64_share DESC, model_id, layer, neuron LIMIT 20

-- which neurons fire on ' return' (in the activations sample), and how hard, as a share of their max
SELECT a.model_id, a.layer, a.neuron, a.site, count(*) AS hits,
       round(avg(a.act / n.max_act), 3) AS mean_share_of_max
FROM activations a
JOIN tokens t USING (model_id, doc_id, pos)
JOIN neurons n USING (model_id, layer, neuron, site)
WHERE n.is_primary AND t.token = ' return'
GROUP BY ALL ORDER BY hits DESC, mean_share_of_max DESC LIMIT 10

-- the neurons that fire on the same tokens as one neuron most often (here: the strongest primary-site neuron)
WITH one AS (SELECT model_id, layer, neuron, site FROM neurons WHERE is_primary
             ORDER BY max_act DESC, model_id, layer, neuron LIMIT 1),
fired AS (SELECT a.model_id, a.site, a.doc_id, a.pos FROM activations a JOIN one USING (model_id, layer, neuron, site))
SELECT o.model_id, o.layer, o.neuron, b.layer AS layer_b, b.neuron AS neuron_b, count(*) AS together
FROM fired JOIN activations b USING (model_id, site, doc_id, pos) CROSS JOIN one o
WHERE NOT (b.layer = o.layer AND b.neuron = o.neuron)
GROUP BY ALL ORDER BY together DESC, layer_b, neuron_b LIMIT 10

-- neurons whose explanation predicts their held-out activations best (solu autolabel)
SELECT model_id, layer, neuron, kind, explanation, round(score, 3) AS score,
       round(score_low, 3) AS low, round(score_high, 3) AS high, round(top_share, 2) AS top_share
FROM current_explanations WHERE score IS NOT NULL
ORDER BY score DESC, model_id, layer, neuron LIMIT 10

-- the strongest connections between layers, by virtual weight (solu index)
SELECT model_id, layer, neuron, other_layer, other_neuron, round(weight, 4) AS weight
FROM connections WHERE direction = 'downstream' AND rank = 1
ORDER BY abs(weight) DESC, model_id, layer, neuron LIMIT 10

-- neurons whose zeroing hurts their own top examples most (solu index --ablation on)
SELECT model_id, layer, neuron, round(sum(delta_zero) / count(DISTINCT rank), 3) AS loss_change_per_example
FROM ablations GROUP BY ALL ORDER BY loss_change_per_example DESC NULLS LAST, 1, 2, 3 LIMIT 10

-- the same neuron in another model (solu match): best matches, strongest first
SELECT model_id, layer, neuron, other_model, other_layer, other_neuron, round(r, 3) AS r
FROM neuron_matches WHERE rank = 1 ORDER BY r DESC, model_id, layer, neuron LIMIT 10

-- SoLU neurons whose top examples change most across the LayerNorm
SELECT model_id, layer, neuron, top_k, round(overlap, 2) AS overlap, round(rank_corr, 2) AS rank_corr
FROM ln_agreement ORDER BY overlap, model_id, layer, neuron LIMIT 10

-- GELU vs SoLU: loss, and how sparse their neurons are (primary sites; density above the index's threshold)
SELECT m.model_id, m.act_fn, round(m.eval_loss, 3) AS eval_loss,
       round(median(n.frac_active_rel), 4) AS median_density, round(median(n.kurtosis), 1) AS median_kurtosis
FROM neurons n JOIN models m USING (model_id) WHERE n.is_primary
GROUP BY ALL ORDER BY m.model_id

-- the tokens that most often carry a top example's max (tokens[max_pos + 1]: lists count from 1)
SELECT model_id, tokens[max_pos + 1] AS token, count(*) AS top_examples, count(DISTINCT (layer, neuron)) AS neurons
FROM examples WHERE kind = 'top' AND max_pos < len(tokens)
GROUP BY ALL ORDER BY top_examples DESC, model_id, token LIMIT 10

-- the heatmap of one example, token by token: the best example of the GELU neuron with the largest max
WITH best AS (SELECT model_id, layer, neuron, site FROM neurons WHERE site = 'post'
              ORDER BY max_act DESC, model_id, layer, neuron LIMIT 1),
example AS (SELECT e.start_pos, e.tokens, e.acts, generate_subscripts(e.tokens, 1) AS i
            FROM examples e JOIN best USING (model_id, layer, neuron, site) WHERE e.kind = 'top' AND e.rank = 1)
SELECT i - 1 AS window_pos, start_pos + i - 1 AS pos, tokens[i] AS token, round(acts[i], 3) AS act
FROM example ORDER BY window_pos

-- neurons whose direct effect on the logits most promotes one token
SELECT model_id, layer, neuron, token, round(weight, 3) AS weight FROM logits
WHERE sign = 'pos' AND rank = 1 ORDER BY weight DESC, model_id, layer, neuron LIMIT 10

-- human labels with their authors, newest first
SELECT model_id, layer, neuron, label, note, author, created_at
FROM current_labels WHERE source = 'human' AND label <> '' ORDER BY created_at DESC LIMIT 50
