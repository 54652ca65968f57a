-- The database as it is today (schema version 14). A new database is created from this
-- file; an older one is brought here by the numbered steps in schema.py, and a test
-- checks that migrating a version-1 database gives exactly this.
--
-- Columns appear in the order a migrated database has them: a column added by a later
-- step comes last in its table, with the step that added it in a comment.
--
-- Rebuildable index data, replaced whenever a model is re-indexed: models, index_runs,
-- index_details, neurons, examples, logits, activations, tokens, match_sample, connections, ablations; neuron_matches,
-- rebuilt by `solu match`; concept_scores and
-- concepts and explanations, rebuilt by `solu autolabel`. Human data, never deleted by the indexer:
-- labels, studies, study_answers.

CREATE TABLE meta(
    key VARCHAR PRIMARY KEY,
    value VARCHAR                 -- schema_version: the version below
);

-- ------------------------------------------------------------------ the index

CREATE TABLE models(              -- one row per model_id
    model_id VARCHAR PRIMARY KEY,
    act_fn VARCHAR,               -- gelu, solu_ln, ...
    n_layers INTEGER, d_model INTEGER, d_mlp INTEGER, n_heads INTEGER, n_ctx INTEGER, d_vocab INTEGER,
    n_params BIGINT,
    eval_loss DOUBLE,             -- from the checkpoint's training run (NULL for others)
    tokens_trained BIGINT,
    source VARCHAR,               -- where it was loaded from
    config JSON,                  -- everything the loader recorded
    loss_curve JSON,              -- a checkpoint's training loss curve (rows of its loss CSV)
    source_kind VARCHAR,          -- 5: 'checkpoint' (solu train), 'tl-legacy' or 'hf'
    revision VARCHAR              -- 5: the hub commit it was read at
);

CREATE TABLE index_runs(          -- one row per `solu index` of a model
    run_id VARCHAR, model_id VARCHAR, dataset VARCHAR,
    tokens BIGINT, documents BIGINT,
    top_k INTEGER, window_before INTEGER, window_after INTEGER,
    sites VARCHAR[],              -- the site names of a layer
    bands INTEGER,                -- equal-width activation intervals sampled per neuron
    band_kind VARCHAR,            -- 'interval'
    samples_per_band INTEGER, random_samples INTEGER,
    activation_threshold DOUBLE,  -- fraction of a neuron's max that enters `activations`
    sample_documents INTEGER,     -- documents in the activation sample
    started_at TIMESTAMP, seconds DOUBLE, tokens_per_s DOUBLE,
    code_version VARCHAR, device VARCHAR,
    sample_segments INTEGER,      -- 6: segments in the activation sample
    sample_tokens BIGINT,         -- 6: and their tokens
    sample_rule VARCHAR,          -- 6: how the sample was chosen
    segment_tokens INTEGER,       -- 6: tokens per segment, the unit of ranking
    dataset_sha256 VARCHAR,       -- 11: sha256 of the builtin corpus read (NULL for other datasets)
    sample_rows BIGINT            -- 13: the activations table's budget of rows (index.engine.sample_rows)
);

CREATE TABLE neurons(             -- one row per neuron and site
    model_id VARCHAR, layer INTEGER, neuron INTEGER,
    site VARCHAR,                 -- pre_ln (SoLU before its LayerNorm), post_ln, or post (GELU, ...)
    is_primary BOOLEAN,           -- the site the explorer and the measures read
    max_act FLOAT, min_act FLOAT,
    mean_act DOUBLE, std_act DOUBLE, kurtosis DOUBLE,
    frac_active DOUBLE,           -- tokens > 0
    frac_active_rel DOUBLE,       -- tokens > activation_threshold x max_act
    hist_lo FLOAT, hist_hi FLOAT, -- equal-width histogram over [hist_lo, hist_hi]
    hist_counts BIGINT[],
    max_tokens VARCHAR[],         -- tokens most often at the max of the top examples
    max_token_counts INTEGER[],
    sample_cut FLOAT,             -- 13: the activations table holds this neuron's sample tokens above it
                                  --     (threshold x max_act, or higher where the budget of rows bound)
    PRIMARY KEY (model_id, layer, neuron, site)
);

CREATE TABLE examples(            -- a window of tokens around a segment's max, per neuron
    model_id VARCHAR, layer INTEGER, neuron INTEGER, site VARCHAR,
    kind VARCHAR,                 -- 'top', 'interval' (equal-width activation intervals) or 'random'
    band INTEGER,                 -- the interval, for kind 'interval'
    rank INTEGER,                 -- 1-based within the neuron's list (and interval)
    doc_id BIGINT,
    max_act FLOAT,                -- the segment's max activation
    max_pos INTEGER,              -- index of the max in tokens/acts (0-based)
    start_pos INTEGER,            -- document position of tokens[1]
    tokens VARCHAR[], acts FLOAT[], -- aligned token by token
    segment INTEGER               -- 6: the segment of the document
);

CREATE TABLE logits(              -- top and bottom direct logit effects per neuron
    model_id VARCHAR, layer INTEGER, neuron INTEGER,
    sign VARCHAR,                 -- 'pos' or 'neg'
    rank INTEGER, token VARCHAR, token_id INTEGER, weight FLOAT
);

CREATE TABLE activations(         -- the activation sample: tokens above neurons.sample_cut (13: a budget of rows)
    model_id VARCHAR, layer INTEGER, neuron INTEGER, site VARCHAR,
    doc_id BIGINT, pos INTEGER, act FLOAT,
    segment INTEGER               -- 6
);

CREATE TABLE tokens(              -- the token ids of the activation sample's segments
    model_id VARCHAR, doc_id BIGINT, pos INTEGER, token VARCHAR, token_id INTEGER,
    segment INTEGER,              -- 6
    match_index INTEGER           -- 14: the token's place in the match sample (NULL: not in it)
);

CREATE TABLE match_sample(        -- 14: each primary-site neuron's activations at the match tokens
    model_id VARCHAR, layer INTEGER, neuron INTEGER, site VARCHAR,
    acts BLOB                     -- float16, little-endian, in tokens.match_index order; 0 at or below the threshold
);

CREATE TABLE index_details(       -- 4: all of a run's settings and where its time went
    run_id VARCHAR, model_id VARCHAR, tokens_requested BIGINT, stats_every INTEGER,
    stats_tokens BIGINT, config JSON, timings JSON
);

CREATE TABLE connections(         -- 9: each neuron's strongest partners by virtual weight (index.engine.connections)
    model_id VARCHAR, layer INTEGER, neuron INTEGER,
    direction VARCHAR,            -- 'downstream' (the neuron feeds other_layer > layer) or 'upstream'
    sign VARCHAR,                 -- 'pos' or 'neg'
    rank INTEGER,                 -- 1 = strongest
    other_layer INTEGER, other_neuron INTEGER,
    weight FLOAT                  -- W_out row, through the reading block's ln2 weight, into the W_in column
);

CREATE TABLE ablations(          -- 9: what zeroing a neuron costs on its top examples (solu index --ablation on)
    model_id VARCHAR, layer INTEGER, neuron INTEGER,
    rank INTEGER,                 -- the top example's rank (examples.rank, kind 'top', primary site)
    window_pos INTEGER,           -- the token's place in the example's window (example_tokens.window_pos)
    token_id INTEGER,
    loss FLOAT,                   -- next-token loss of this token, the window (after BOS) as the context
    delta_zero FLOAT,             -- its change with the neuron's output zeroed
    delta_mean FLOAT              -- and with it held at its mean activation
);

CREATE TABLE neuron_matches(      -- 9: the same neuron in another model (solu match)
    model_id VARCHAR, layer INTEGER, neuron INTEGER,
    other_model VARCHAR, other_layer INTEGER, other_neuron INTEGER,
    rank INTEGER,                 -- 1 = best match
    r DOUBLE,                     -- correlation of their activations over the activation sample's tokens
    tokens BIGINT,                -- tokens it was computed over
    method VARCHAR                -- 'activations'
);

-- ------------------------------------------------------------------ human data

CREATE TABLE labels(              -- append-only: a neuron's history of labels
    label_id BIGINT, model_id VARCHAR, layer INTEGER,
    neuron INTEGER, label VARCHAR, note VARCHAR,
    source VARCHAR,               -- 'human' or 'auto' (solu autolabel)
    author VARCHAR, score DOUBLE, status VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE studies(             -- 2: the blinded interpretability study
    study VARCHAR PRIMARY KEY, models VARCHAR[], per_model INTEGER, seed INTEGER,
    snippets INTEGER, created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE study_answers(       -- 2
    answer_id BIGINT, study VARCHAR, rater VARCHAR, model_id VARCHAR, layer INTEGER,
    neuron INTEGER, site VARCHAR, answer VARCHAR, label VARCHAR, seconds DOUBLE,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- ------------------------------------------------------------------ concept scores (solu autolabel)

CREATE TABLE concepts(            -- 2
    name VARCHAR PRIMARY KEY, description VARCHAR, pattern VARCHAR,
    updated_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE concept_scores(      -- 2
    model_id VARCHAR, layer INTEGER, neuron INTEGER, site VARCHAR, concept VARCHAR,
    auroc DOUBLE, top_share DOUBLE, n_recorded BIGINT, n_top INTEGER,  -- 12: no score (it copied top_share)
    run_id VARCHAR,               -- 3: the index run they were computed from
    top_hits INTEGER,             -- 7: the paper's rule: top_hits of n_top top examples,
    top_low DOUBLE,               -- 7: with its Wilson 95% interval
    top_high DOUBLE,              -- 7
    sample_share DOUBLE,          -- 7: share of the activation sample's mass on the concept
    base_rate DOUBLE,             -- 7: against the concept's share of tokens
    occurrences BIGINT,           -- 7
    PRIMARY KEY (model_id, layer, neuron, site, concept)
);

CREATE TABLE explanations(        -- 8: each primary-site neuron's explanation (index.measure.explain)
    model_id VARCHAR, layer INTEGER, neuron INTEGER, site VARCHAR,
    kind VARCHAR,                 -- concept, tokens, context or word
    explanation VARCHAR,          -- as shown: "base64", "`return`", "`str` after `sub`", "a piece of `substr`"
    args VARCHAR[],               -- the rule: concept name, normalised tokens, [previous, token] or [word]
    score DOUBLE,                 -- held-out: correlation of predicted and actual activations
    score_low DOUBLE, score_high DOUBLE, -- its 95% bootstrap interval (held-out records resampled)
    fit_score DOUBLE,             -- the same correlation on the fit records it was chosen on
    fit_mean DOUBLE,              -- the prediction where the rule holds: its mean activation on the fit records
    top_share DOUBLE,             -- the paper's rule read with this explanation: share of top examples peaking on it
    sample_share DOUBLE,          -- share of the activation sample's recorded mass where it holds
    fit_tokens BIGINT, held_tokens BIGINT, held_records INTEGER,
    run_id VARCHAR,               -- the index run they were computed from
    PRIMARY KEY (model_id, layer, neuron, site)
);

CREATE TABLE experiments(         -- 10: a `solu experiment` grid and its settings (JSON)
    experiment VARCHAR PRIMARY KEY, grid JSON, created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE experiment_cells(    -- 10: each finished cell (model) of an experiment, with its timings
    experiment VARCHAR, model_id VARCHAR, act_fn VARCHAR, n_layers INTEGER, seed INTEGER, eval_loss DOUBLE,
    train_s DOUBLE, index_s DOUBLE, score_s DOUBLE, finished_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (experiment, model_id)
);

-- ------------------------------------------------------------------ views

CREATE VIEW current_labels AS     -- the latest label per neuron and source
    SELECT * EXCLUDE (rn) FROM (
        SELECT *, row_number() OVER (PARTITION BY model_id, layer, neuron, source
                                     ORDER BY created_at DESC, label_id DESC) AS rn
        FROM labels) WHERE rn = 1;

CREATE VIEW example_tokens AS     -- 4: examples one token per row (13: unnested in the select list)
    SELECT model_id, layer, neuron, site, kind, band, rank, doc_id, example_max,
           start_pos + window_pos AS pos, window_pos, tokens[window_pos + 1] AS token, acts[window_pos + 1] AS act,
           max_pos, window_pos = max_pos AS is_max
    FROM (SELECT *, max_act AS example_max, unnest(range(len(tokens))) AS window_pos FROM examples);

CREATE VIEW latest_runs AS        -- 7: each model's latest index run
    SELECT * FROM index_runs
    QUALIFY row_number() OVER (PARTITION BY model_id ORDER BY started_at DESC, run_id DESC) = 1;

CREATE VIEW current_concept_scores AS  -- 7: the concept scores of the latest run
    SELECT s.* FROM concept_scores s LEFT JOIN latest_runs r USING (model_id)
    WHERE s.run_id IS NOT DISTINCT FROM r.run_id;

CREATE VIEW best_concepts AS      -- 7: each primary-site neuron's best concept of the latest run (12: by top share)
    SELECT s.* FROM current_concept_scores s JOIN neurons n USING (model_id, layer, neuron, site)
    WHERE n.is_primary
    QUALIFY row_number() OVER (PARTITION BY s.model_id, s.layer, s.neuron
                               ORDER BY s.top_share DESC NULLS LAST, s.sample_share DESC NULLS LAST,
                                        s.concept) = 1;

CREATE VIEW current_explanations AS  -- 8: the explanations of the latest run
    SELECT e.* FROM explanations e LEFT JOIN latest_runs r USING (model_id)
    WHERE e.run_id IS NOT DISTINCT FROM r.run_id;

CREATE VIEW ln_agreement AS       -- 9: SoLU's LayerNorm caveat: top-K before (pre_ln) vs after (post_ln)
    WITH pre AS (SELECT model_id, layer, neuron, doc_id, coalesce(segment, 0) AS segment, rank FROM examples
                 WHERE kind = 'top' AND site = 'pre_ln'),
         post AS (SELECT model_id, layer, neuron, doc_id, coalesce(segment, 0) AS segment, rank FROM examples
                  WHERE kind = 'top' AND site = 'post_ln'),
         joined AS (SELECT model_id, layer, neuron, pre.rank AS pre_rank, post.rank AS post_rank
                    FROM pre FULL JOIN post USING (model_id, layer, neuron, doc_id, segment)),
         sized AS (SELECT *, count(pre_rank) OVER (PARTITION BY model_id, layer, neuron) AS k FROM joined)
    SELECT model_id, layer, neuron, max(k) AS top_k,   -- overlap: share of the pre-LN top-K also in the post-LN one
           count(*) FILTER (WHERE pre_rank IS NOT NULL AND post_rank IS NOT NULL) / max(k) AS overlap,
           corr(coalesce(pre_rank, k + 1), coalesce(post_rank, k + 1)) AS rank_corr  -- Spearman, absent = K + 1
    FROM sized GROUP BY model_id, layer, neuron;
