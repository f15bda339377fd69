import pytest

from tuneforge.data.words import split_words


@pytest.mark.parametrize("text, words", [
    ("I met Tim Cook, then flew to London.", "I met Tim Cook , then flew to London ."),
    ('Apple (the company) hired "Tim" Cook!', 'Apple ( the company ) hired " Tim " Cook !'),
    ("The U.S. and e.g., Obama's dog...", "The U.S. and e.g. , Obama 's dog ..."),
    ("visit google.com. at 10:30, 50% off C# #tag @user?!", "visit google.com . at 10:30 , 50% off C# #tag @user ? !"),
    ("Stratford-upon-Avon’s  mayor, J. Smith; students' books", "Stratford-upon-Avon ’s mayor , J. Smith ; students ' books"),
    ("Mr. Smith of Apple Inc. met Dr. Who, etc.", "Mr. Smith of Apple Inc. met Dr. Who , etc."),  # CoNLL keeps them
    ("Paris—the capital—in 1990–2000 –x–", "Paris — the capital — in 1990–2000 – x –"),  # em dashes alone
    ("我爱北京天安门。", "我 爱 北 京 天 安 门 。"),
    ("Tokyo東京 is big", "Tokyo 東 京 is big"),
    ("... ?! ( 's", "... ?! ( 's"),  # punctuation alone (or a bare 's) is one word
    ("Wait...what «quoted» ¿qué?", "Wait...what « quoted » ¿ qué ?"),
    ("  \n\t ", ""),
    ("\ufeffApple\u200bGoogle", "Apple Google"),  # a byte-order mark and a zero-width space separate words
])
def test_words_split_as_ner_data_is_tokenised_with_offsets(text, words):
    found = split_words(text)
    assert " ".join(w for w, _, _ in found) == words
    assert all(text[s:e] == w for w, s, e in found)  # offsets point back into the text
    assert [s for _, s, _ in found] == sorted(s for _, s, _ in found)
