"""The quickstart recipe's dropout follows how often the time budget repeats the training data."""

from tinygemma.quickstart import AUTO_DROPOUT, RECIPE, Recipe


def test_dropout_only_when_the_budget_repeats_the_data_many_times():
    ten_min = 600.0
    small_file = 233_000  # the 1 MB TinyStories sample: ~23 passes in 10 minutes
    big_corpus = 5_000_000  # the 20 MB built-in corpus: about one pass
    assert RECIPE.epochs(small_file, ten_min) > 20
    assert RECIPE.dropout_for(small_file, ten_min) == AUTO_DROPOUT > 0
    assert RECIPE.dropout_for(big_corpus, ten_min) == 0.0
    assert RECIPE.dropout_for(small_file, 60.0) == 0.0  # one minute: 2.3 passes, no overfitting yet
    assert RECIPE.dropout_for(None, ten_min) == 0.0  # unknown data size: plain Gemma 3


def test_train_config_carries_the_dropout_and_overrides_win():
    cfg = RECIPE.train_config("d", "o", vocab_size=512, max_time=600.0, train_tokens=233_000)
    assert cfg.model.dropout == AUTO_DROPOUT and cfg.model.vocab_size == 512 and cfg.max_time == 600.0
    assert RECIPE.train_config("d", "o", 512, 600.0, train_tokens=5_000_000).model.dropout == 0.0
    assert Recipe(dropout=0.05).train_config("d", "o", 512, 600.0, train_tokens=1).model.dropout == 0.05
    fixed = Recipe(sets=(*RECIPE.sets, "model.dropout=0.3")).train_config("d", "o", 512, 600.0, train_tokens=5_000_000)
    assert fixed.model.dropout == 0.3
