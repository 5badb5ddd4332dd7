"""The quickstart recipe's regularisation follows how often the time budget repeats the training data."""

from tinygemma.quickstart import AUTO_DROPOUT, AUTO_WEIGHT_DECAY, BASE_WEIGHT_DECAY, DECAY_PASSES, RECIPE, Recipe


def test_regularisation_only_when_the_budget_repeats_the_data_many_times():
    ten_min = 600.0
    small_file = 185_000  # the 0.76 MB TinyStories story file in bpe:4096 tokens: ~40 passes in 10 minutes
    big_corpus = 5_000_000  # the 20 MB built-in corpus: about one pass
    assert RECIPE.epochs(small_file, ten_min) > 20
    assert RECIPE.dropout_for(small_file, ten_min) == AUTO_DROPOUT > 0
    assert RECIPE.weight_decay_for(small_file, ten_min) == AUTO_WEIGHT_DECAY > BASE_WEIGHT_DECAY
    assert RECIPE.dropout_for(big_corpus, ten_min) == 0.0
    assert RECIPE.weight_decay_for(big_corpus, ten_min) == BASE_WEIGHT_DECAY
    assert RECIPE.dropout_for(small_file, 60.0) == 0.0  # one minute: ~4 passes, no overfitting yet
    assert RECIPE.dropout_for(None, ten_min) == 0.0  # unknown data size: plain Gemma 3
    assert RECIPE.weight_decay_for(None, ten_min) == BASE_WEIGHT_DECAY


def test_train_config_carries_the_regularisation_and_overrides_win():
    cfg = RECIPE.train_config("d", "o", vocab_size=512, max_time=600.0, train_tokens=185_000)
    assert cfg.model.dropout == AUTO_DROPOUT and cfg.weight_decay == AUTO_WEIGHT_DECAY
    assert cfg.model.vocab_size == 512 and cfg.max_time == 600.0 and cfg.optimizer == "muon"
    big = RECIPE.train_config("d", "o", 512, 600.0, train_tokens=5_000_000)
    assert big.model.dropout == 0.0 and big.weight_decay == BASE_WEIGHT_DECAY
    assert Recipe(dropout=0.05).train_config("d", "o", 512, 600.0, train_tokens=1).model.dropout == 0.05
    assert Recipe(weight_decay=0.3).train_config("d", "o", 512, 600.0, train_tokens=1).weight_decay == 0.3
    fixed = Recipe(sets=(*RECIPE.sets, "model.dropout=0.3", "weight_decay=0.5"))
    cfg = fixed.train_config("d", "o", 512, 600.0, train_tokens=5_000_000)
    assert cfg.model.dropout == 0.3 and cfg.weight_decay == 0.5


def test_weight_decay_grows_with_the_passes_past_decay_passes():
    ten_min = 600.0
    story_file, quarter = 185_000, 54_000  # bpe:4096 tokens of the 759 KB story file; bpe:1024 ones of a quarter
    assert RECIPE.epochs(story_file, ten_min) < DECAY_PASSES  # the whole file keeps the measured 2.0
    assert RECIPE.weight_decay_for(story_file, ten_min) == AUTO_WEIGHT_DECAY
    passes = RECIPE.epochs(quarter, ten_min)
    assert passes > 2 * DECAY_PASSES
    assert RECIPE.weight_decay_for(quarter, ten_min) == round(AUTO_WEIGHT_DECAY * passes / DECAY_PASSES, 2)
    assert RECIPE.weight_decay_for(quarter // 2, ten_min) > RECIPE.weight_decay_for(quarter, ten_min) > 5.0
    assert RECIPE.train_config("d", "o", 1024, ten_min, train_tokens=quarter).weight_decay > 5.0
