"""Name data for the independent registry evaluation generator: native script and romanised forms.

Everything here was written for this generator from general knowledge of Arabic and Persian
naming; nothing is taken from Takamul's own generator or linker. Spellings follow these published
conventions and observed usage (facts, cited; no tables were copied):

- ALA-LC Romanization Tables: Arabic (Library of Congress, 2012) and Persian (2012): the scholarly
  forms marked ``^`` below (Muḥammad, ʻAbd al-Raḥmān, Ḥusaynī, Riz̤ā), the article written ``al-``
  without assimilation.
- DIN 31635:2011 (Transliteration of the Arabic alphabet): ``ḫ``, ``š``, ``ṯ``, ``ǧ``, ``ġ`` and the
  assimilated article (``aš-Šammarī``); a few forms marked ``^``.
- BGN/PCGN 1956 for Arabic and the UNGEGN-reported Arabic and Persian systems (Working Group on
  Romanization Systems): the assimilated article without hyphen in geographic names (``Ar Riyāḑ``,
  ``Ad Dammām``), hence the ``Ash Shammari`` / ``Ad Dosari`` family-name forms, and the ``e``/``o``
  vowels of Iranian usage (Mohammad, Hossein, Mehdi).
- ICAO Doc 9303 Part 3 (machine readable travel documents): passport names are upper-case Latin
  without diacritics, which is why Gulf passport spellings (MOHAMMED, ALQAHTANI, ABDULRAHMAN) are
  the most frequent romanised forms below.
- Wikipedia's articles on the given names Muhammad, Abdul Rahman, Hussein, Fatimah, Aisha and on
  Persian names list their documented variant spellings (Mohammed/Muhammad/Mohamad/Mohamed/
  Mohd, Abdulrahman/Abd al-Rahman/Abdelrahman/Abdur Rahman, Hossein/Husayn/Hussain/Hosein ...).
- Iranian civil-registry practice: Persian letters ی and ک (Arabic ي, ك typed on Arabic
  keyboards), the zero-width non-joiner in compounds (حسن‌زاده), the ``Seyyed``/``Seyyedeh`` title
  of descendants of the Prophet and the ``Sadat`` suffix for women.
- Saudi civil-registry practice: four-part names (given, father, grandfather, family), family
  names from tribes (القحطاني, الدوسري ...) written with the article, women keeping their family
  name, ``bin``/``bint`` in formal chains, Hadrami ``Ba-`` names.

Data format (one entry per line): ``native | spelling, spelling, ... | tags``. The first spelling is
the most common; plain spellings can be a person's own spelling, ``~`` marks a clerk's misspelling
and ``^`` a scholarly transliteration (both only appear as a variation), ``@`` lines are
``عبد`` compounds whose spellings are the divine-name root. Line order is the frequency rank.
A line starting with a comma continues the spellings of the line above. Tags: ``o``
old-fashioned, ``y`` modern (weights depend on birth cohort), ``s`` a family name mostly of
Seyyed families. ``+`` in the native form marks the parts of a compound given name.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from random import Random

ZWNJ = "\u200c"

# --------------------------------------------------------------------------------------------
# Saudi (and Gulf Arab) given names, male, most frequent first
# --------------------------------------------------------------------------------------------
SA_MALE = """
محمد | Mohammed, Mohammad, Muhammad, Mohamed, Mohamad, Muhammed, Mohd, Mohmmed, ~Mohamme, ~Mhammed
  , ~Mohammd, ^Muḥammad
عبدالله | Abdullah, Abdallah, Abdulla, Abd Allah, Abdalla, Abdellah, Abdulah, ~Abdullh, ~Abduallah
  , ^ʻAbd Allāh
@عبد+الرحمن | Rahman, Rehman, Rahmaan
@عبد+العزيز | Aziz, Azeez, Azez
فهد | Fahad, Fahd, Fahed, ~Fhad, ^Fahd
خالد | Khalid, Khaled, Khaalid, ~Kaled, ~Halid, ^Khālid, ^Ḫālid
سعد | Saad, Sa'ad, Saed, Sad, ^Saʻd
أحمد | Ahmed, Ahmad, Ahamed, ~Ahemd, ^Aḥmad
فيصل | Faisal, Faysal, Feisal, Faisel, ~Fisal, ^Fayṣal
سلطان | Sultan, Sultaan, Soltan, ^Sulṭān
ناصر | Nasser, Nasir, Naser, Nassir, ~Naseer, ^Nāṣir
سعود | Saud, Saoud, Sa'ud, Soud, ^Suʻūd
صالح | Saleh, Salih, Saaleh, ^Ṣāliḥ
علي | Ali, Aly, Alee, ^ʻAlī
عمر | Omar, Umar, Omer, ^ʻUmar
تركي | Turki, Turky, Torki, ^Turkī
إبراهيم | Ibrahim, Ebrahim, Ibraheem, Ibraheim, Brahim, ^Ibrāhīm
بندر | Bandar, Bander, Bandur
ماجد | Majed, Majid, Maged, Maajid
نايف | Nayef, Naif, Nayif, Naief
سلمان | Salman, Salmaan, Selman
يوسف | Yousef, Yusuf, Youssef, Yousif, Yosef, Yusef, ~Yousf
حمد | Hamad, Hamd, ~Hmad
مشعل | Meshal, Mishal, Mishaal, Mesh'al, Meshaal
بدر | Badr, Bader, Badar
نواف | Nawaf, Nawwaf, Nawaaf
@عبد+الإله | Elah, Ilah, Ellah, Illah
مساعد | Musaed, Mosaed, Musaid, Mousaed
متعب | Mutab, Muteb, Mitab, Mit'ab, Metab
راشد | Rashid, Rashed, Raashid
منصور | Mansour, Mansoor, Mansur
سامي | Sami, Samy
طلال | Talal, Talaal
ياسر | Yasser, Yasir, Yaser
وليد | Waleed, Walid, Waled
حسن | Hassan, Hasan, ^Ḥasan
حسين | Hussein, Hussain, Husain, Hossein, Husayn, Hosain, ^Ḥusayn
عادل | Adel, Adil, Aadil
عثمان | Othman, Osman, Uthman, Usman, Outhman, ^ʻUthmān, ^ʿUṯmān
زياد | Ziad, Ziyad, Zeyad, Ziyaad
مازن | Mazen, Mazin
أنس | Anas, Anass
ريان | Rayan, Rayyan, Ryan | y
مشاري | Mishari, Meshari, Mashari
@عبد+الملك | Malik, Malek
@عبد+الكريم | Karim, Kareem, Kerim
@عبد+المحسن | Mohsen, Muhsin, Mohsin
مبارك | Mubarak, Mobarak, Mubark | o
حمود | Hamoud, Hamood, Hammoud, Humood
ظافر | Dhafer, Thafer, Zafer, Dafer, Dhafir
محسن | Mohsen, Muhsin, Mohsin
عايض | Aidh, Ayedh, Aaidh, Ayed
سعيد | Saeed, Said, Saied, Sa'eed
جابر | Jaber, Jabir, Gaber
حامد | Hamed, Hamid, Haamed
عوض | Awad, Awadh, Ewad | o
مطلق | Mutlaq, Mutlak, Mutlag, Motlaq | o
غازي | Ghazi, Ghazy, Gazi
عيسى | Issa, Eisa, Isa, Essa, Aissa
موسى | Musa, Mousa, Moussa, Moosa
حمزة | Hamza, Hamzah, Hamzeh, ~Hezma, ~Hamzaa, ^Ḥamzah
@عبد+الهادي | Hadi, Hady
@عبد+اللطيف | Latif, Lateef
هشام | Hisham, Hesham, Hicham
أسامة | Osama, Usama, Osamah, Ousama, Usamah
معاذ | Muath, Moaz, Muaz, Moath, Muadh, Mouaz
مهند | Muhannad, Mohanad, Mohannad, Muhanad
بسام | Bassam, Basam
رائد | Raed, Ra'ed, Raid, Raaed
فارس | Fares, Faris, Faress
عمار | Ammar, Amar, Ammaar
يزيد | Yazeed, Yazid, Yezid
@عبد+السلام | Salam, Salaam
@عبد+الوهاب | Wahab, Wahhab, Wahaab
ثامر | Thamer, Thamir, Tamer
ضيف الله | Dhaifallah, Daifallah, Dhaifullah, Deifallah, Dayfallah, Dhaif Allah | o
فرحان | Farhan, Farhaan
هادي | Hadi, Hady
مرزوق | Marzouq, Marzooq, Marzouk, Marzoog | o
عايد | Ayed, Aied, Aayed
سالم | Salem, Salim, Saalem
سليمان | Sulaiman, Suleiman, Sulayman, Soliman, Slaiman
صقر | Saqr, Saqer, Sager, Saker
حمدان | Hamdan, Hamdaan
عبيد | Obaid, Ubaid, Obaied, Obeid
وائل | Wael, Wa'el, Wail
قاسم | Qasim, Qassim, Kasem, Gasim, Qasem
هيثم | Haitham, Haytham, Heitham
لؤي | Loay, Louai, Luai, Loai
باسل | Basel, Basil, Bassel
أيمن | Ayman, Aiman, Aymen
عمرو | Amr, Amro, Amru, Omro
طارق | Tariq, Tarek, Tarik, Tareq
مالك | Malik, Malek
جمال | Jamal, Gamal, Jamaal
كمال | Kamal, Kamaal
إسماعيل | Ismail, Ismaeel, Esmail, Ismael, Ismaiel
يحيى | Yahya, Yehia, Yahia, Yehya
زكريا | Zakaria, Zakariya, Zakariyya, Zakariah
نبيل | Nabil, Nabeel
مشبب | Mushabab, Mishbab | o
دخيل الله | Dakhilallah, Dakheelallah, Dakhil Allah | o
@عبد+المجيد | Majeed, Majid, Mageed
@عبد+الرحيم | Rahim, Raheem
مفرح | Mufarreh, Mefreh, Mufarrih | o
@عبد+الرزاق | Razzaq, Razaq, Razzak, Razak
خليل | Khalil, Khaleel
سيف | Saif, Sayf, Seif
تميم | Tamim, Tameem | y
عزام | Azzam, Azam
نزار | Nizar, Nezar
راكان | Rakan, Rakkan | y
إياد | Iyad, Eyad, Ayad
حازم | Hazem, Hazim
ماهر | Maher, Mahir
منيف | Munif, Muneef | o
مقرن | Muqrin, Megren, Mogren
هزاع | Hazza, Hazzaa
@عبد+الخالق | Khaliq, Khaleq, Khalek
ذياب | Dhiyab, Thiyab, Diab, Dhyab
فواز | Fawaz, Fawwaz, Fauwaz
مهدي | Mahdi, Mehdi
جاسم | Jasim, Jassim, Jasem
عطا الله | Atallah, Ataullah, Ata Allah | o
@عبد+الحميد | Hamid, Hameed
@عبد+الناصر | Nasser, Naser, Nasir
@عبد+القادر | Qader, Qadir, Kader, Gader
@عبد+الفتاح | Fattah, Fatah
"""

SA_FEMALE = """
نورة | Noura, Nora, Norah, Nourah, Nura, Noorah, ^Nūrah
سارة | Sarah, Sara, Saara, ^Sārah
فاطمة | Fatimah, Fatima, Fatma, Fatemah, Fatmah, ~Fatimh, ^Fāṭimah
منيرة | Munira, Muneera, Moneera, Munirah, Monira
عائشة | Aisha, Aishah, Ayesha, A'isha, Aysha, Aicha, ^ʻĀʼishah
مريم | Maryam, Mariam, Mariyam, Miriam, Meriam
هيا | Haya, Hayya, Haia
الجوهرة | Aljohara, Al-Jawhara, Al Jouhara, Jawhara, Aljawharah, Al-Johara
حصة | Hessa, Hissah, Hussa, Hessah, Hissa
نوف | Nouf, Nuf, Noof, Nof
ريم | Reem, Rim, Reim, Riem
هند | Hind, Hend
لطيفة | Latifa, Lateefa, Latifah, Lateefah
منى | Mona, Muna, Mouna
أمل | Amal, Amel, Amaal
العنود | Alanoud, Al-Anoud, Anoud, Al Anood, Alanood
مشاعل | Mashael, Mashail, Mashaeel
شهد | Shahad, Shahd | y
رهف | Rahaf, Rahf | y
دانة | Dana, Danah, Daanah | y
جواهر | Jawaher, Jawahir, Jawahar
أريج | Areej, Arij, Areeg
بشاير | Bashayer, Bashair, Bashaer
غادة | Ghada, Ghadah, Ghadaa
أسماء | Asma, Asmaa, Asma', Esma
خلود | Kholoud, Khulood, Khulud, Kholood
عبير | Abeer, Abir, Abeir
ريما | Rima, Reema, Rema
ليلى | Layla, Leila, Laila, Leyla, Lila
خديجة | Khadija, Khadijah, Khadeeja, Khadeejah, Khadiga
زينب | Zainab, Zaynab, Zeinab, Zaineb
رغد | Raghad, Raghd | y
جود | Jood, Joud, Jud | y
ديم | Deem, Dim | y
لين | Leen, Lin | y
ريماس | Reemas, Rimas | y
تالا | Tala, Talah | y
جنى | Jana, Janna, Jannah | y
لجين | Lujain, Loujain, Lujayn, Lojain | y
أروى | Arwa, Arwaa, Arwah
سلمى | Salma, Selma, Salmaa
هيفاء | Haifa, Haifaa, Hayfa, Hayfaa
وفاء | Wafa, Wafaa, Wafa'
نجلاء | Najla, Najlaa, Naglaa
موضي | Modhi, Moudhi, Mudhi, Mawdhi, Modi | o
شيخة | Shaikha, Sheikha, Shaykha, Shaikhah | o
عزيزة | Aziza, Azizah, Azeeza | o
بدرية | Badria, Badriyah, Badriya, Badriah | o
حنان | Hanan, Hanaan
سميرة | Samira, Sameera, Samirah
نادية | Nadia, Nadya, Nadiah
رانيا | Rania, Raniya, Ranya
دلال | Dalal, Dalaal
ابتسام | Ibtisam, Ebtisam, Ebtesam, Ibtissam
إيمان | Iman, Eman, Imane, Emaan
ندى | Nada, Nadaa, Neda
سعاد | Suad, Souad, Soaad, Su'ad
جميلة | Jamila, Jameela, Jamilah, Gamila
رقية | Ruqayya, Roqaya, Rukaya, Ruqaiya, Ruqayyah
غدير | Ghadeer, Ghadir
ملاك | Malak, Malaak | y
رزان | Razan, Razaan | y
ياسمين | Yasmin, Yasmeen, Jasmin, Yasmine
مها | Maha, Mahaa
فوزية | Fawzia, Fouzia, Fawziyah, Fawziah | o
نوال | Nawal, Nawaal
حياة | Hayat, Hayah
شوق | Shouq, Shoog, Shog | y
أمجاد | Amjad, Amjaad
وجدان | Wijdan, Wejdan
تهاني | Tahani, Tahany
عفاف | Afaf, Afaaf
لولوة | Lulwah, Lulwa, Loulwa | o
مضاوي | Mudhawi, Modhawi | o
الهنوف | Alhanouf, Al-Hanouf, Hanouf, Al Hanoof
سديم | Sadeem, Sadim | y
ميار | Mayar, Miyar | y
غلا | Ghala, Gala | y
ريناد | Renad, Rinad | y
"""

# Family names written with the article ال; the spellings are of the stem, the article is added
# when a spelling is rendered (Al-, Al, Al␣, El-, al-, assimilated Ash-/Ad-/Az- ..., none).
SA_FAMILY_AL = """
القحطاني | Qahtani, Kahtani, Gahtani, Qahtany, ^Qaḥṭānī
العتيبي | Otaibi, Otaiby, Utaybi, Oteibi, Otaybi, ^ʻUtaybī
الحربي | Harbi, Harby, ^Ḥarbī
الغامدي | Ghamdi, Ghamidi, Ghamedi, Gamdi, ^Ghāmidī, ^Ġāmidī
الشمري | Shammari, Shamri, Shammary, Shamary, ^Shammarī, ^Šammarī
الزهراني | Zahrani, Zahrany, Zehrani, ^Zahrānī
المطيري | Mutairi, Mutairy, Motairi, Mteiri, ^Muṭayrī
الدوسري | Dosari, Dossary, Dossari, Dawsari, Dosary, Dusari, ^Dawsarī
العنزي | Anazi, Enezi, Anizi, Enazi, Anzi, ^ʻAnazī
الشهري | Shehri, Shahri, Shehry, ^Shahrī
الشهراني | Shahrani, Shehrani, Shahrany
السبيعي | Subaie, Subaiei, Sobaie, Subaii, Subayi
المالكي | Malki, Maliki, Malky
الجهني | Juhani, Johani, Jehani, Juhany
الرشيدي | Rashidi, Rasheedi, Rashedi
الأسمري | Asmari, Asmary, Esmari
العمري | Omari, Amri, Umari, Omary
اليامي | Yami, Yamy
البلوي | Balawi, Belawi, Balawy
الحارثي | Harthi, Harthy, Harithi
الثبيتي | Thubaiti, Thobaiti, Thubaity
الشمراني | Shamrani, Shamrany
القرني | Qarni, Garni, Qarny, Karni
الهاجري | Hajri, Hajiri, Hajry, Hagri
المري | Marri, Murri, Mari
الخالدي | Khalidi, Khaldi, Khaledi
السلمي | Sulami, Solami, Sulamy
الرويلي | Ruwaili, Ruwaily, Rowaili
البيشي | Bishi, Beeshi, Bishy
الفيفي | Faifi, Fifi, Fayfi
الحازمي | Hazmi, Hazimi, Hazemi
الكثيري | Kathiri, Kathiry, Katheeri
العجمي | Ajmi, Ajami, Ejmi
الحويطي | Huwaiti, Howaiti, Hwaiti
الشريف | Sharif, Shareef, Cherif
التميمي | Tamimi, Tamimy, Temimi
القرشي | Qurashi, Qurashy, Quraishi, Qureshi
الهاشمي | Hashimi, Hashemi, Hashmi
العسيري | Asiri, Aseeri, Assiri, Asiry
الزبيدي | Zubaidi, Zubaidy, Zebidi, Zobaidi
الجابر | Jaber, Jabir
السديري | Sudairi, Sudairy, Sedairi
الصالح | Saleh, Salih
الحمد | Hamad, Hamed
العثمان | Othman, Uthman, Osman
الراشد | Rashed, Rashid
المنصور | Mansour, Mansoor
الناصر | Nasser, Nasir
النعيمي | Nuaimi, Noaimi, Nuaimy
العبيدي | Obaidi, Ubaidi, Obaidy
الخثعمي | Khathami, Khathaami, Khathamy
العلياني | Alyani, Aliani, Olyani
السهلي | Sahli, Sahly, Sehli
الظفيري | Dhafeeri, Dhafiri, Thafiri, Zafiri
الحميدي | Humaidi, Hamidi, Homaidi
الربيعي | Rubaie, Rabiei, Rubaiee
الدخيل | Dakheel, Dakhil
المهنا | Muhanna, Mohanna
العيسى | Eissa, Issa, Esa
المطرفي | Matrafi, Mitrafi
الصاعدي | Saedi, Sa'idi, Saidi
الأحمدي | Ahmadi, Ahmedi
المحمدي | Mohammadi, Muhammadi
الجعيد | Juaid, Jeaid
العصيمي | Osaimi, Usaimi, Osaimy
البقمي | Buqami, Boqami, Bogami
الغنام | Ghannam, Ganam
العمودي | Amoudi, Amoudy, Amudi
النجار | Najjar, Najar, Naggar
الهوساوي | Hawsawi, Hausawi, Howsawi
السيد | Sayed, Sayyid, Sayyed
"""

# Family names written with آل ("family of"), rendered Al Saud / Al-Saud / Alsaud / Aal Saud.
SA_FAMILY_AAL = """
آل سعود | Saud, Saoud
آل مبارك | Mubarak, Mobarak
آل عمر | Omar, Umar
آل الشيخ | Alsheikh, Al-Sheikh, Asheikh
"""

# Family names without the article (Hejazi and Hadrami families, ``Ba-``/``Bin`` names).
SA_FAMILY_PLAIN = """
فلاتة | Fallatah, Falatah, Fallata
باوزير | Bawazir, Ba Wazir, Ba-Wazir, Bawazeer
بن لادن | Bin Laden, Binladin, Bin Ladin
خاشقجي | Khashoggi, Khashogji, Kashoggi
بخش | Bakhsh, Bakhash
باعشن | Baeshen, Ba'eshen, Baashen
بن محفوظ | Bin Mahfouz, Binmahfouz
جمجوم | Jamjoom, Jamjum
زينل | Zainal, Zainel
"""

# Family names of Arab residents in Saudi Arabia (Egypt, Sudan, Yemen, the Levant); the others
# carry their great-grandfather's given name as the fourth name.
ARAB_EXPAT_FAMILY = """
السيد | El-Sayed, Elsayed, El Sayed, Al-Sayed
المصري | El-Masry, Elmasry, Al-Masri, El Masri
الشامي | Al-Shami, El-Shamy, Alshami
اليمني | Al-Yamani, Alyamani, El-Yamani
حسن | Hassan, Hasan
محمود | Mahmoud, Mahmood, Mahmud
عبدالعزيز | Abdelaziz, Abdulaziz, Abdel Aziz
إبراهيم | Ibrahim, Ebrahim
عثمان | Osman, Othman
منصور | Mansour, Mansur
"""

# South Asian residents (Pakistan, India, Bangladesh): Arabic script as it is written on the
# residence permit. Spellings follow the Urdu/Bengali romanisation conventions of their passports.
SOUTH_ASIAN_MALE = """
محمد | Muhammad, Mohammad, Mohammed, Md, Mohd, Muhammed
عمران | Imran, Emran
آصف | Asif, Asef
طارق | Tariq, Tarik
عرفان | Irfan, Erfan
كاشف | Kashif, Kashef
بلال | Bilal, Belal
عثمان | Usman, Osman
عدنان | Adnan
زبير | Zubair, Zubayr
شاهد | Shahid, Shahed
نديم | Nadeem, Nadim
نويد | Naveed, Navid
وقاص | Waqas, Waqqas
ساجد | Sajid, Sajjid
أرشد | Arshad
رفيق | Rafiq, Rafique, Rafeeq
رضوان | Rizwan, Rezwan
جنيد | Junaid, Junayd
عامر | Aamir, Amir
جاويد | Javed, Javaid, Javid
أكرم | Akram
أنور | Anwar, Anwer
سهيل | Sohail, Suhail
زاهد | Zahid, Zahed
راجيش | Rajesh, Rajeesh
سوريش | Suresh, Sureesh
أنيل | Anil, Aneel
جوزيف | Joseph, Josef
توماس | Thomas, Tomas
مانوج | Manoj, Manoje
فيجاي | Vijay, Vijai
رحيم | Rahim, Raheem
"""

SOUTH_ASIAN_FEMALE = """
فاطمة | Fatima, Fatema, Fathima
عائشة | Ayesha, Aisha, Aysha
نسرين | Nasreen, Nasrin
شاهين | Shaheen, Shahin
رخسانة | Rukhsana, Rukhsanah
سلمى | Salma, Selma
نازية | Nazia, Naziya
بشرى | Bushra, Busra
ماري | Mary, Mari
أنيتا | Anita, Aneeta
سونيا | Sonia, Sonya
بريا | Priya, Pria
"""

SOUTH_ASIAN_FAMILY = """
خان | Khan, Khaan
أحمد | Ahmed, Ahmad
علي | Ali, Aly
حسين | Hussain, Hussein, Husain, Hossain
شاه | Shah, Sha
ملك | Malik, Malick
بت | Butt, But
قريشي | Qureshi, Quraishi, Koreshi
صديقي | Siddiqui, Siddiqi, Sidiqui
شودري | Chaudhry, Chaudhary, Choudhury, Chowdhury
أختر | Akhtar, Akhter
إقبال | Iqbal, Ikbal
رضا | Raza, Reza
ميرزا | Mirza, Mirzaa
شيخ | Sheikh, Shaikh, Shaik
أنصاري | Ansari, Ansary
كومار | Kumar, Kumaar
ناير | Nair, Nayar
بيلاي | Pillai, Pilay
مينون | Menon, Menan
فرغيز | Varghese, Verghese
شارما | Sharma, Sarma
داس | Das, Dass
رحمن | Rahman, Rehman
إسلام | Islam, Eslam
الدين | Uddin, Uddeen, Ud Din
ميا | Miah, Mia
"""

# Filipino residents: Latin only (their Arabic residence-permit names are not modelled).
FILIPINO_MALE = [
    "Jose",
    "Juan",
    "Mark Anthony",
    "John Paul",
    "Rodel",
    "Ronaldo",
    "Reynaldo",
    "Romeo",
    "Arnel",
    "Edwin",
    "Jayson",
    "Michael",
    "Christopher",
    "Noel",
    "Jun",
]
FILIPINO_FEMALE = [
    "Maria",
    "Mary Grace",
    "Jocelyn",
    "Marites",
    "Rowena",
    "Analyn",
    "Lorna",
    "Maria Cristina",
    "Jennifer",
    "Rosalie",
    "Maricel",
    "Gemma",
    "Princess",
    "Joy",
]
# surname, with its documented spelling/spacing variants (Spanish particles written apart,
# together or capitalised differently)
FILIPINO_FAMILY = """
Santos | Santos
Reyes | Reyes, Reys
Cruz | Cruz
Bautista | Bautista, Baptista
Ocampo | Ocampo
Garcia | Garcia, Garcya
Mendoza | Mendoza, Mendosa
Torres | Torres
Castillo | Castillo, Castilo
Flores | Flores
Villanueva | Villanueva, Villa Nueva, Vilanueva
Ramos | Ramos
Aquino | Aquino
Navarro | Navarro
Dela Cruz | Dela Cruz, De la Cruz, Delacruz, De La Cruz
Del Rosario | Del Rosario, Delrosario, Del-Rosario
Gonzales | Gonzales, Gonzalez
Fernandez | Fernandez, Fernandes
Domingo | Domingo
De Guzman | De Guzman, Deguzman, De-Guzman
Pascual | Pascual
"""

# --------------------------------------------------------------------------------------------
# Iranian names (Persian letters ی and ک)
# --------------------------------------------------------------------------------------------
IR_MALE = """
محمد | Mohammad, Mohamad, Muhammad, Mohammed, Mohamed, ~Mohamd, ^Muḥammad
علی | Ali, Aly, ^ʻAlī
حسین | Hossein, Hosein, Hussein, Hosain, Husain, Hossain, Hosseyn, ^Ḥusayn
رضا | Reza, Rezaa, Riza, Raza, ^Riz̤ā
مهدی | Mehdi, Mahdi, Mehdy, ^Mahdī
امیر | Amir, Ameer, Emir
محمد+رضا | Mohammadreza, Mohammad-Reza, Mohammad Reza, Mohamadreza, Muhammad-Reza, ~Mohamadrza
  , ^Muḥammad Riz̤ā
ابوالفضل | Abolfazl, Abulfazl, Abolfazel, Abol-Fazl, Abolfazal, ~Ebulfazl, ~Abolfaz, ^Abū al-Faz̤l
امیر+حسین | Amirhossein, Amir-Hossein, Amir Hossein, Amirhosein, Amir Hosein
علی+رضا | Alireza, Ali-Reza, Ali Reza, Aliriza
حسن | Hassan, Hasan, ^Ḥasan
سعید | Saeed, Saeid, Said, Saied, Sa'id, ^Saʻīd
مجید | Majid, Majeed
مصطفی | Mostafa, Mustafa, Moustafa, Mustapha, ^Muṣṭafá
احمد | Ahmad, Ahmed, ^Aḥmad
جواد | Javad, Jawad, Djavad, ^Javād
حمید | Hamid, Hameed
محسن | Mohsen, Mohsin, Muhsin
یوسف | Yousef, Yusef, Yousof, Yusof, Yusuf, Youssef
مرتضی | Morteza, Mortaza, Murtaza, Murteza
ابراهیم | Ebrahim, Ibrahim, Ebraheem
اسماعیل | Esmaeil, Esmail, Ismail, Esmaeel, Esmaiil
عباس | Abbas, Abas
محمد+حسین | Mohammadhossein, Mohammad-Hossein, Mohammad Hossein, Mohamadhosein
امید | Omid, Omeed
بهروز | Behrouz, Behrooz, Behruz, Bahrouz
داریوش | Dariush, Daryoush, Dariusch, Dariosh
کوروش | Kourosh, Kurosh, Koroush, Kooroush
آرش | Arash, Aarash
سینا | Sina, Sinaa
پویا | Pouya, Puya, Pooya
آریا | Arya, Aria, Ariya | y
بهزاد | Behzad, Bahzad
فرهاد | Farhad, Farhaad
کامران | Kamran, Kamraan
مهران | Mehran, Mahran
حمید+رضا | Hamidreza, Hamid-Reza, Hamid Reza
غلام+رضا | Gholamreza, Gholam-Reza, Gholam Reza, Qolamreza, Gholamriza | o
غلام+حسین | Gholamhossein, Gholam-Hossein, Gholam Hossein, Qolamhosein | o
عبدالله | Abdollah, Abdolah, Abdullah, Abdallah
اکبر | Akbar, Akber
قاسم | Ghasem, Qasem, Gasem, Qasim, Ghassem
صادق | Sadegh, Sadeq, Sadiq, Sadeg
کاظم | Kazem, Kazim, Kazzem, Kadhem
نادر | Nader, Nadir
رحیم | Rahim, Raheem
یاسین | Yasin, Yaseen, Yasine | y
امیر+علی | Amirali, Amir-Ali, Amir Ali | y
محمد+مهدی | Mohammadmahdi, Mohammad-Mahdi, Mohammad Mehdi, Mohammadmehdi | y
ماهان | Mahan, Mahaan | y
حسام | Hesam, Hessam, Husam, Hosam
سجاد | Sajjad, Sajad
میلاد | Milad, Meelad
وحید | Vahid, Wahid, Vahed
نیما | Nima, Neema
بهنام | Behnam, Bahnam
پیمان | Peyman, Payman, Paiman
رامین | Ramin, Ramine
علی+اکبر | Aliakbar, Ali-Akbar, Ali Akbar | o
اصغر | Asghar, Asqar | o
علی+اصغر | Aliasghar, Ali-Asghar, Ali Asghar | o
محمد+علی | Mohammadali, Mohammad-Ali, Mohammad Ali
ابوالقاسم | Abolghasem, Abolqasem, Abulqasim, Abolghassem | o
مسعود | Masoud, Masood, Masud, Massoud
منصور | Mansour, Mansoor, Mansur
ناصر | Naser, Nasser, Nasir
جعفر | Jafar, Jaafar, Ja'far, Djafar
هادی | Hadi, Hady
محمود | Mahmoud, Mahmood, Mahmud
ایمان | Iman, Eiman, Eyman
روح‌الله | Rouhollah, Ruhollah, Rohollah, Rouhallah | o
حبیب‌الله | Habibollah, Habibullah, Habiballah | o
فضل‌الله | Fazlollah, Fazlallah, Fazlullah | o
طاها | Taha, Tahaa | y
امیر+محمد | Amirmohammad, Amir-Mohammad, Amir Mohammad | y
امین | Amin, Ameen
محمد+امین | Mohammadamin, Mohammad-Amin, Mohammad Amin | y
رسول | Rasoul, Rasool, Rasul
ساسان | Sasan, Sassan
بابک | Babak, Baabak
کیوان | Keyvan, Kayvan, Kaivan, Keivan
شهرام | Shahram, Shahraam
سهراب | Sohrab, Sohraab
سیاوش | Siavash, Siavosh, Siyavash
هومن | Houman, Hooman, Human
یزدان | Yazdan
فرشید | Farshid, Farsheed
احسان | Ehsan, Ihsan, Ehsaan
عرفان | Erfan, Irfan
"""

IR_FEMALE = """
فاطمه | Fatemeh, Fatemah, Fateme, Fatima, Fatmeh, ^Fāṭimah
زهرا | Zahra, Zahraa, Zahrah, ^Zahrā
مریم | Maryam, Mariam, Maryum
زینب | Zeinab, Zeynab, Zainab, Zaynab
معصومه | Masoumeh, Masoume, Masumeh, Maasoumeh, Ma'soumeh
سمانه | Samaneh, Samane, Samana
نرگس | Narges, Nargess, Nargis
الهام | Elham, Elhaam, Ilham
لیلا | Leila, Leyla, Layla, Lila
سارا | Sara, Sarah
مهسا | Mahsa, Mahsaa
نازنین | Nazanin, Nazaneen
فاطمه+زهرا | Fatemehzahra, Fatemeh-Zahra, Fatemeh Zahra | y
ستایش | Setayesh, Setaiesh | y
هستی | Hasti, Hasty | y
کوثر | Kowsar, Kosar, Kousar, Kawthar
ریحانه | Reyhaneh, Reihaneh, Reyhane, Rayhaneh
حدیث | Hadis, Hadith, Hadees
مهدیه | Mahdieh, Mahdiyeh, Mahdiye, Mehdieh
سمیرا | Samira, Samirah
شیرین | Shirin, Shireen, Chirine
پریسا | Parisa, Parissa
نسرین | Nasrin, Nasreen
اعظم | Azam, A'zam | o
طاهره | Tahereh, Tahere, Tahera | o
سکینه | Sakineh, Sakine, Sakina | o
رقیه | Roghayeh, Roqayeh, Roghaye, Roqaye, Ruqayya | o
خدیجه | Khadijeh, Khadije, Khadija
منیژه | Manijeh, Manizheh, Manije | o
پروین | Parvin, Parveen | o
آزاده | Azadeh, Azade
نیلوفر | Niloufar, Niloofar, Nilufar
مینا | Mina, Meena
هانیه | Hanieh, Haniyeh, Haniye
یاسمن | Yasaman, Yasamin, Yasmin
محدثه | Mohaddeseh, Mohadeseh, Mohadese, Mohaddese
آیدا | Aida, Ayda
بهاره | Bahareh, Bahare
فرزانه | Farzaneh, Farzane
اکرم | Akram | o
صدیقه | Sedigheh, Sediqeh, Sedighe, Seddigheh | o
عاطفه | Atefeh, Atefe, Atifa
ملیکا | Melika, Malika | y
حلما | Helma, Helmaa | y
باران | Baran, Baraan | y
آوا | Ava, Aava | y
رها | Raha, Rahaa | y
نگار | Negar, Nigar
شیما | Shima, Sheema
مرضیه | Marzieh, Marziyeh, Marzie
زهره | Zohreh, Zohre, Zuhra
اشرف | Ashraf | o
بتول | Batoul, Batool, Batul | o
مهناز | Mahnaz, Mahnaaz
فریبا | Fariba, Fareeba
سپیده | Sepideh, Sepide
الناز | Elnaz, Elnaaz
ترانه | Taraneh, Tarane
سحر | Sahar, Saher
ندا | Neda, Nada
"""

IR_FAMILY = """
محمدی | Mohammadi, Mohamadi, Muhammadi, Mohammady, ^Muḥammadī
حسینی | Hosseini, Hoseini, Husseini, Hosseyni, Hosaini, Hussaini, ~Hoseyni, ^Ḥusaynī | s
احمدی | Ahmadi, Ahmady, Ahmedi
رضایی | Rezaei, Rezaee, Rezaie, Rezayi, Rezai, Rezaii
موسوی | Mousavi, Musavi, Moosavi, Mousawi, Musawi | s
جعفری | Jafari, Jafary, Jaafari, Ja'fari, ~Gafari, Djafari, ^Jaʻfarī
کریمی | Karimi, Karimy, Karemi
رحیمی | Rahimi, Rahimy
کاظمی | Kazemi, Kazimi, ~Kazami, ~Kahzemi, Kazemy, ^Kāẓimī
صادقی | Sadeghi, Sadeqi, Sadighi
حیدری | Heidari, Heydari, Haidari, Heidary
قاسمی | Ghasemi, Qasemi, Ghassemi, Gasemi
هاشمی | Hashemi, Hashimi, Hashemy | s
اکبری | Akbari, Akbary
نوری | Nouri, Noori, Nuri
عباسی | Abbasi, Abasi, Abbassi
ابراهیمی | Ebrahimi, Ibrahimi, Ebrahimy
امیری | Amiri, Amiry
سلیمانی | Soleimani, Soleymani, Sulaimani, Solaimani
طاهری | Taheri, Tahery
نجفی | Najafi, Nadjafi
رحمانی | Rahmani, Rahmany
یوسفی | Yousefi, Yusefi, Yousfi
کرمی | Karami, Karamy
قربانی | Ghorbani, Qorbani, Ghorbany
اسدی | Asadi, Assadi
زارعی | Zarei, Zare'i, Zareie, Zarie
بهرامی | Bahrami, Bahramy
محمدزاده | Mohammadzadeh, Mohammad-Zadeh, Mohamadzadeh, Mohammadzade
علیزاده | Alizadeh, Ali-Zadeh, Alizade
حسن‌زاده | Hassanzadeh, Hasanzadeh, Hassan-Zadeh, Hasanzade
فرهادی | Farhadi, Farhady
شریفی | Sharifi, Sharify
مرادی | Moradi, Muradi
خسروی | Khosravi, Khosrawi, Khosravy
صالحی | Salehi, Saalehi
میرزایی | Mirzaei, Mirzaee, Mirzaie, Mirzayi
عزیزی | Azizi, Azizy
کیانی | Kiani, Kiyani, Kiany
نظری | Nazari, Nazary
سلطانی | Soltani, Sultani
افشار | Afshar, Afshaar
طباطبایی | Tabatabaei, Tabatabaee, Tabatabai, Tabatabaie | s
رضوی | Razavi, Razawi | s
فاطمی | Fatemi, Fatimi | s
میرحسینی | Mirhosseini, Mir-Hosseini, Mirhoseini | s
حسینی‌نژاد | Hosseininejad, Hosseini-Nejad, Hosseininezhad | s
جلالی | Jalali, Djalali
ملکی | Maleki, Malaki
رستمی | Rostami, Rustami
اصغری | Asghari, Asqari
باقری | Bagheri, Baqeri
جهانگیری | Jahangiri, Jahangiry
شجاعی | Shojaei, Shojaee, Shojaie
غفاری | Ghaffari, Ghafari, Qaffari
منصوری | Mansouri, Mansoori, Mansuri
نصیری | Nasiri, Nassiri
فتحی | Fathi, Fat-hi
بابایی | Babaei, Babaee, Babaie, Babayi
دهقان | Dehghan, Dehqan, Dehgan
وحیدی | Vahidi, Wahidi
زمانی | Zamani, Zamany
پورمحمدی | Pourmohammadi, Pour-Mohammadi, Purmohammadi
قنبری | Ghanbari, Qanbari
خانی | Khani, Khaani
یزدانی | Yazdani, Yazdany
امینی | Amini, Ameeni
تهرانی | Tehrani, Tehrany
شیرازی | Shirazi, Shirazy
اصفهانی | Esfahani, Isfahani, Esfehani
تبریزی | Tabrizi, Tabrizy
کرمانی | Kermani, Kirmani
یزدی | Yazdi, Yazdy
کاشانی | Kashani, Kashany
قزوینی | Ghazvini, Qazvini
همدانی | Hamedani, Hamadani
مشهدی | Mashhadi, Mashadi
زنجانی | Zanjani, Zanjany
رشتی | Rashti, Rashty
اردبیلی | Ardabili, Ardebili
خراسانی | Khorasani, Khorassani
گیلانی | Gilani, Guilani
لاریجانی | Larijani, Laridjani
دزفولی | Dezfuli, Dezfouli
سبزواری | Sabzevari, Sabzewari
"""

# Persian family-name suffixes for the long tail of generated names: base + suffix.
# (native suffix, joined with ZWNJ after a joining letter?, Latin spellings)
IR_SUFFIXES: tuple[tuple[str, bool, tuple[str, ...]], ...] = (
    ("زاده", True, ("zadeh", "zade", "-Zadeh", " Zadeh")),
    ("پور", True, ("pour", "pur", "poor", "-Pour")),
    ("نژاد", True, ("nejad", "nezhad", "nejhad", "-Nejad")),
    ("فر", True, ("far", "-Far", "faar")),
    ("لو", False, ("loo", "lou", "lu")),
    ("وند", False, ("vand", "wand")),
)
# bases of generated Persian family names (given names ending in a consonant)
IR_SUFFIX_BASES = (
    "حسن",
    "حسین",
    "علی",
    "محمد",
    "احمد",
    "رحیم",
    "کریم",
    "جعفر",
    "کاظم",
    "قاسم",
    "ابراهیم",
    "یوسف",
    "عباس",
    "اکبر",
    "اصغر",
    "محمود",
    "ناصر",
    "منصور",
    "جواد",
    "سعید",
    "حمید",
    "مجید",
    "بهرام",
    "فرهاد",
    "امیر",
    "رسول",
    "صادق",
    "نادر",
)

# --------------------------------------------------------------------------------------------
# places (native | spellings | weight | telephone area code)
# --------------------------------------------------------------------------------------------
SA_CITIES = """
الرياض | Riyadh, Riyad, Ar Riyad, Al Riyadh | 27 | 11
جدة | Jeddah, Jiddah, Jidda, Jedda | 15 | 12
مكة المكرمة | Makkah, Mecca, Makkah Al Mukarramah, Makka | 7 | 12
المدينة المنورة | Madinah, Medina, Al Madinah Al Munawwarah, Madina | 5 | 14
الدمام | Dammam, Ad Dammam, Al Dammam | 5 | 13
الخبر | Khobar, Al Khobar, Al-Khobar | 2 | 13
الطائف | Taif, At Taif, Al Taif, Ta'if | 3 | 12
تبوك | Tabuk, Tabouk, Tabook | 2 | 14
أبها | Abha | 1.5 | 17
خميس مشيط | Khamis Mushait, Khamis Mushayt, Khamees Mushait | 2 | 17
بريدة | Buraidah, Buraydah, Buraida | 2 | 16
حائل | Hail, Ha'il, Hayil | 2 | 16
جازان | Jazan, Jizan, Gizan | 2 | 17
نجران | Najran, Nejran | 1.5 | 17
الهفوف | Hofuf, Al Hofuf, Hufuf, Al-Ahsa | 3 | 13
القطيف | Qatif, Al Qatif | 1.5 | 13
الجبيل | Jubail, Al Jubail | 1 | 13
ينبع | Yanbu, Yanbu', Yenbo | 1 | 14
عرعر | Arar, Ar'ar | 1 | 14
سكاكا | Sakaka, Sakakah | 0.8 | 14
الخرج | Al Kharj, Kharj | 1.2 | 11
حفر الباطن | Hafar Al Batin, Hafr Al-Batin, Hafar Albatin | 1.2 | 13
الباحة | Al Baha, Baha, Al-Bahah | 0.8 | 17
عنيزة | Unaizah, Onaizah, Unayzah | 0.8 | 16
"""

IR_CITIES = """
تهران | Tehran, Teheran | 18 | 21
مشهد | Mashhad, Meshed | 7 | 51
اصفهان | Isfahan, Esfahan, Ispahan | 5 | 31
کرج | Karaj | 4 | 26
شیراز | Shiraz | 4 | 71
تبریز | Tabriz | 4 | 41
قم | Qom, Ghom, Qum | 3 | 25
اهواز | Ahvaz, Ahwaz | 3 | 61
کرمانشاه | Kermanshah | 2 | 83
ارومیه | Urmia, Orumiyeh, Oroumieh | 2 | 44
رشت | Rasht | 2 | 13
زاهدان | Zahedan | 1.5 | 54
همدان | Hamadan, Hamedan | 1.5 | 81
کرمان | Kerman | 1.5 | 34
یزد | Yazd | 1.5 | 35
اردبیل | Ardabil, Ardebil | 1.2 | 45
بندرعباس | Bandar Abbas, Bandar-e Abbas, Bandarabbas | 1.2 | 76
اراک | Arak | 1.2 | 86
زنجان | Zanjan | 1.2 | 24
سنندج | Sanandaj | 1 | 87
قزوین | Qazvin, Ghazvin | 1 | 28
خرم‌آباد | Khorramabad, Khoramabad, Khorram Abad | 1 | 66
گرگان | Gorgan | 1 | 17
ساری | Sari | 1 | 11
"""

# districts / streets for the first address line (native | Latin)
SA_DISTRICTS = (
    ("حي النسيم", "Al Naseem Dist."),
    ("حي الملز", "Al Malaz"),
    ("حي العليا", "Al Olaya"),
    ("حي الروضة", "Al Rawdah"),
    ("حي السلامة", "Al Salamah"),
    ("حي الصفا", "Al Safa"),
    ("حي الفيصلية", "Al Faisaliyah"),
    ("حي النزهة", "Al Nuzhah"),
    ("حي الشفا", "Al Shifa"),
    ("حي الربوة", "Al Rabwah"),
    ("حي الحمراء", "Al Hamra"),
    ("حي المروج", "Al Muruj"),
)
IR_STREETS = (
    ("خیابان ولیعصر", "Valiasr St."),
    ("خیابان انقلاب", "Enghelab St."),
    ("خیابان آزادی", "Azadi St."),
    ("خیابان امام خمینی", "Imam Khomeini St."),
    ("خیابان شریعتی", "Shariati St."),
    ("خیابان فردوسی", "Ferdowsi St."),
    ("بلوار کشاورز", "Keshavarz Blvd."),
    ("خیابان مطهری", "Motahari St."),
    ("خیابان طالقانی", "Taleghani St."),
    ("کوچه بهار", "Bahar Alley"),
)

SEYYED_MALE = ("سید", ("Seyed", "Seyyed", "Sayed", "Sayyed", "Seied", "Sayyid"))
SEYYED_FEMALE = ("سیده", ("Seyedeh", "Seyyedeh", "Sayedeh", "Seyyede"))
SADAT = ("سادات", ("Sadat", "Saadat"))

# --------------------------------------------------------------------------------------------
# parsed structures
# --------------------------------------------------------------------------------------------
COHORT_BANDS = (1970, 2000)  # birth years: < 1970, 1970-1999, >= 2000


def cohort_band(year: int) -> int:
    """The birth-cohort band (0, 1, 2) of a birth year, for cohort-dependent name weights."""
    return 0 if year < COHORT_BANDS[0] else (1 if year < COHORT_BANDS[1] else 2)


_COHORT_FACTOR = {"": (1.0, 1.0, 1.0), "o": (2.5, 0.6, 0.08), "y": (0.05, 0.6, 3.0)}


@dataclass(eq=False)
class NameEntry:
    """One name: canonical native form, the spellings a person may own, and the variation pool."""

    nid: int
    kind: str  # given, family_al, family_aal, family_plain, family
    native: str
    own: tuple[str, ...]  # spellings a person can have as their own
    own_cw: tuple[float, ...]  # cumulative weights of ``own``
    pool: tuple[str, ...]  # every Latin spelling (own, rule, misspelt, scholarly)
    pool_w: tuple[float, ...]  # weight of each in a romanisation variation
    cohort: str = ""
    seyyed: bool = False
    parts: tuple[NameEntry, ...] = ()  # components of a compound given name
    native_alts: tuple[str, ...] = ()  # alternative native writings (spacing, ZWNJ)
    latin_only: bool = False

    def own_spelling(self, rng: Random) -> str:
        """A person's own romanisation, drawn by its frequency."""
        if len(self.own) == 1:
            return self.own[0]
        i = bisect.bisect_right(self.own_cw, rng.random() * self.own_cw[-1])
        return self.own[min(i, len(self.own) - 1)]

    def other_spelling(self, rng: Random, current: str) -> str | None:
        """A different romanisation from the pool (None if there is no other)."""
        cands = [(s, w) for s, w in zip(self.pool, self.pool_w, strict=True) if s != current]
        if not cands:
            return None
        total = sum(w for _, w in cands)
        x = rng.random() * total
        for s, w in cands:
            x -= w
            if x <= 0:
                return s
        return cands[-1][0]


@dataclass(eq=False)
class NameList:
    """Entries with Zipf-like rank weights per birth-cohort band."""

    entries: list[NameEntry]
    cum: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]] = field(
        default=((), (), ())
    )

    def draw(self, rng: Random, band: int = 1) -> NameEntry:
        cw = self.cum[band]
        i = bisect.bisect_right(cw, rng.random() * cw[-1])
        return self.entries[min(i, len(self.entries) - 1)]


_REGISTRY: list[NameEntry] = []


def _fold_letters(s: str, persian: bool) -> str:
    """Letters of the list's own orthography (Persian ی ک, Arabic ي ك)."""
    if persian:
        return s.replace("ي", "ی").replace("ك", "ک").replace("ى", "ی")
    return s.replace("ی", "ي").replace("ک", "ك")


def _weights_for(n: int) -> list[float]:
    return [1.0 / (i + 1) ** 1.6 for i in range(n)]


def _dedupe(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for s in items:
        if s and s not in seen:
            seen.add(s)
            out.append(s)
    return out


_VOWELS = set("aeiouAEIOU")


def rule_variants(s: str, persian: bool) -> list[str]:
    """Systematic respellings seen across romanisation practices (at most a few per name).

    Final -ah/-a and -eh/-e (Hamzah/Hamza, Fatemeh/Fateme), doubled consonants written single
    (Hassan/Hasan), ee/i and oo/ou/u (Saeed/Said, Yousef/Yusef), q written k or g in the Gulf
    (Qahtani/Kahtani/Gahtani), gh/q in Persian (Ghasemi/Qasemi), ei/ey (Heidari/Heydari), final
    -i written -y (Jafari/Jafary) and zh/j (Nezhad/Nejad).
    """
    out: list[str] = []
    low = s.lower()
    if low.endswith(("ah", "eh")) and len(s) > 4:
        out.append(s[:-1])
    elif low.endswith("a") and len(s) > 3 and s[-2] not in _VOWELS:
        out.append(s + "h")
    m = re.search(r"([bcdfgjklmnpqrstvwxz])\1", s)
    if m:
        out.append(s[: m.start()] + s[m.start() + 1 :])
    if "ee" in s:
        out.append(s.replace("ee", "i", 1))
    if "ou" in s:
        out.append(s.replace("ou", "u", 1))
        out.append(s.replace("ou", "oo", 1))
    if "ei" in s:
        out.append(s.replace("ei", "ey", 1))
    if persian:
        if "gh" in low:
            out.append(re.sub("gh", "q", s, count=1).replace("Gh", "Q", 1))
        elif "q" in low:
            out.append(s.replace("q", "gh", 1).replace("Q", "Gh", 1))
        if "zh" in s:
            out.append(s.replace("zh", "j", 1))
    else:
        if "q" in s:
            out.append(s.replace("q", "k", 1))
        if s.startswith("Q"):
            out.append("G" + s[1:])
    if low.endswith("i") and len(s) > 4:
        out.append(s[:-1] + "y")
    return [v for v in _dedupe(out) if v != s][:4]


def _entry(
    native: str,
    spellings: Sequence[str],
    kind: str,
    *,
    persian: bool,
    cohort: str = "",
    seyyed: bool = False,
    native_alts: Sequence[str] = (),
    latin_only: bool = False,
    rules: bool = True,
    weighted: Sequence[tuple[str, float]] = (),
    max_own: int = 12,
) -> NameEntry:
    """One entry; ``weighted`` gives generated spellings with their weights (the first
    ``max_own`` can be a person's own spelling, all are in the variation pool)."""
    if weighted:
        spellings = [*(s for s, _ in weighted), *spellings]
    own_all = [s for s in spellings if s[0] not in "~^"]
    own = own_all[:max_own]
    misspelt = [s[1:] for s in spellings if s[0] == "~"]
    scholarly = [s[1:] for s in spellings if s[0] == "^"]
    generated: list[str] = []
    if rules:
        for s in own[:2]:
            generated.extend(rule_variants(s, persian))
    pool = _dedupe([*own_all, *generated, *misspelt, *scholarly])
    weight = {}
    for s in pool:
        weight[s] = 0.5
    for s in generated:
        weight[s] = 0.35
    for s in misspelt:
        weight[s] = 0.25
    for s in scholarly:
        weight[s] = 0.08
    for i, s in enumerate(own_all):
        weight[s] = 1.0 / (1 + 0.25 * i) if i < max_own else 0.3
    if weighted:
        given_w = dict(weighted)
        ow = [given_w.get(s, 0.01) for s in own]
    else:
        ow = _weights_for(len(own))
    cw: list[float] = []
    acc = 0.0
    for w in ow:
        acc += w
        cw.append(acc)
    e = NameEntry(
        nid=len(_REGISTRY),
        kind=kind,
        native=native,
        own=tuple(own),
        own_cw=tuple(cw),
        pool=tuple(pool),
        pool_w=tuple(weight[s] for s in pool),
        cohort=cohort,
        seyyed=seyyed,
        native_alts=tuple(native_alts),
        latin_only=latin_only,
    )
    _REGISTRY.append(e)
    return e


def _lines(block: str) -> list[tuple[str, list[str], str]]:
    out: list[tuple[str, list[str], str]] = []
    for raw in block.strip().splitlines():
        if not raw.strip():
            continue
        if raw.lstrip().startswith(","):  # continuation of the previous entry's spellings
            more = [s.strip() for s in raw.split(",") if s.strip()]
            out[-1][1].extend(more)
            continue
        cols = [c.strip() for c in raw.split("|")]
        native = cols[0]
        spellings = [s.strip() for s in cols[1].split(",") if s.strip()]
        tag = cols[2] if len(cols) > 2 else ""
        out.append((native, spellings, tag))
    return out


# --- Abd compounds ------------------------------------------------------------------------
_SUN_STARTS = ("Th", "Dh", "Sh", "T", "D", "R", "Z", "S", "N", "L")

# (pattern, weight as a person's own spelling); {R} root capitalised, {r} root lower-case
_ABD_FORMS = (
    ("Abdul{r}", 0.30),
    ("Abdul {R}", 0.12),
    ("Abdul-{R}", 0.05),
    ("Abdel{r}", 0.06),
    ("Abdel {R}", 0.04),
    ("Abd El {R}", 0.03),
    ("Abd al-{R}", 0.03),
    ("Abd Al {R}", 0.02),
    ("Abdal{r}", 0.03),
    ("Abdol{r}", 0.015),
)


def _sun_prefix(stem: str) -> str | None:
    for p in _SUN_STARTS:
        if stem.startswith(p) and p != "L":
            return p.lower()
    return None


def abd_spellings(roots: Sequence[str]) -> list[tuple[str, float]]:
    """Romanisations of عبد + article + root: Abdulrahman, Abdul Rahman, Abdelrahman,
    Abd al-Rahman (ALA-LC without diacritics), Abdurrahman / Abdur Rahman (assimilated, common in
    South Asia and Indonesia), Abd ar-Rahman ..."""
    out: list[tuple[str, float]] = []
    for k, root in enumerate(roots):
        scale = 1.0 / (1 + 4.0 * k)
        for pat, w in _ABD_FORMS:
            out.append((pat.format(R=root, r=root.lower()), w * scale))
        sun = _sun_prefix(root)
        if sun:
            out.append((f"Abdu{sun}{root.lower()}", 0.04 * scale))  # Abdurrahman
            out.append((f"Abdu{sun} {root}", 0.03 * scale))  # Abdur Rahman
            out.append((f"Abd a{sun}-{root}", 0.015 * scale))  # Abd ar-Rahman
    return _merge(out)


def _merge(items: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """Spellings sorted by weight, each once (first occurrence keeps its weight)."""
    seen: set[str] = set()
    res: list[tuple[str, float]] = []
    for s, w in sorted(items, key=lambda t: -t[1]):
        if s not in seen:
            seen.add(s)
            res.append((s, w))
    return res


def _build_given(
    block: str, *, persian: bool, kind: str = "given", registry: dict[str, NameEntry] | None = None
) -> NameList:
    entries: list[NameEntry] = []
    compounds: list[tuple[NameEntry, list[str]]] = []
    for native, spellings, tag in _lines(block):
        native = _fold_letters(native, persian)
        if native.startswith("@"):
            body = native[1:]
            abd, root = body.split("+")
            joined = abd + root
            alts: tuple[str, ...] = (abd + " " + root,)
            e = _entry(
                joined,
                (),
                kind,
                persian=persian,
                cohort=tag,
                native_alts=alts,
                weighted=abd_spellings(spellings),
                rules=False,
            )
        elif "+" in native:
            comps = native.split("+")
            joined = "".join(comps)
            alts = (" ".join(comps), ZWNJ.join(comps))
            e = _entry(joined, spellings, kind, persian=persian, cohort=tag, native_alts=alts)
            compounds.append((e, comps))
        else:
            alts_l: list[str] = []
            if " " in native:
                alts_l.append(native.replace(" ", ""))
            if ZWNJ in native:
                alts_l.extend([native.replace(ZWNJ, " "), native.replace(ZWNJ, "")])
            e = _entry(native, spellings, kind, persian=persian, cohort=tag, native_alts=alts_l)
        entries.append(e)
    index = {e.native: e for e in entries}
    if registry is not None:
        index = {**registry, **index}
    for e, comps in compounds:
        e.parts = tuple(index[c] for c in comps if c in index)
    return _zipf(entries, s=1.05, b=1.0)


def _zipf(entries: list[NameEntry], s: float, b: float) -> NameList:
    cums: list[tuple[float, ...]] = []
    for band in range(3):
        acc = 0.0
        cw: list[float] = []
        for r, e in enumerate(entries):
            acc += _COHORT_FACTOR[e.cohort][band] / (r + 1 + b) ** s
            cw.append(acc)
        cums.append(tuple(cw))
    return NameList(entries, (cums[0], cums[1], cums[2]))


# article forms for ال family names: (pattern, weight as own spelling)
_AL_FORMS = (
    ("Al-{S}", 0.28),
    ("Al{s}", 0.22),
    ("Al {S}", 0.14),
    ("{S}", 0.09),
    ("al-{S}", 0.04),
    ("El-{S}", 0.03),
    ("El{s}", 0.02),
    ("El {S}", 0.02),
)
_AAL_FORMS = (("Al {S}", 0.35), ("Al-{S}", 0.25), ("Al{s}", 0.2), ("Aal {S}", 0.08), ("{S}", 0.07))


def article_spellings(stems: Sequence[str], aal: bool = False) -> list[tuple[str, float]]:
    """Spellings of an ال (or آل) family name: every article form with every stem spelling."""
    out: list[tuple[str, float]] = []
    forms = _AAL_FORMS if aal else _AL_FORMS
    for k, stem in enumerate(stems):
        scale = 1.0 / (1 + 1.2 * k) ** 1.3
        for pat, w in forms:
            out.append((pat.format(S=stem, s=stem.lower()), w * scale))
        sun = None if aal else _sun_prefix(stem)
        if sun:
            out.append((f"A{sun}-{stem}", 0.025 * scale))  # Ash-Shammari (assimilated)
            out.append((f"A{sun} {stem}", 0.02 * scale))  # Ash Shammari (BGN/PCGN style)
    return _merge(out)


def _family_entry(
    native: str, spellings: Sequence[str], kind: str, *, persian: bool, tag: str = ""
) -> NameEntry:
    own_stems = [s for s in spellings if s[0] not in "~^"]
    scholarly = [s[1:] for s in spellings if s[0] == "^"]
    misspelt = [s[1:] for s in spellings if s[0] == "~"]
    alts: list[str] = []
    weighted: list[tuple[str, float]] = []
    own: list[str] = []
    if kind in ("family_al", "family_aal"):
        weighted = article_spellings(own_stems, aal=kind == "family_aal")
        # scholarly with the article as ALA-LC (al-) and DIN 31635 writes it
        extra = [f"al-{s}" for s in scholarly]
        misspelt = [f"Al-{s}" for s in misspelt]
        if kind == "family_al":
            alts = [native[2:], "ال " + native[2:]]
    else:
        own = list(own_stems)
        extra = list(scholarly)
        if " " in native:
            alts = [native.replace(" ", "")]
        if ZWNJ in native:
            alts = [native.replace(ZWNJ, " "), native.replace(ZWNJ, "")]
    spellings2 = [*own, *(f"~{s}" for s in misspelt), *(f"^{s}" for s in extra)]
    stem_rules = kind not in ("family_al", "family_aal")
    e = _entry(
        native,
        spellings2,
        kind,
        persian=persian,
        cohort="",
        seyyed=tag == "s",
        native_alts=alts,
        rules=stem_rules,
        weighted=weighted,
    )
    if kind in ("family_al", "family_aal") and len(own_stems) > 0:
        # a few rule respellings of the stem, under the most common article form
        gen = []
        for v in rule_variants(own_stems[0], persian)[:3]:
            gen.append(f"Al-{v}")
        pool = list(e.pool) + [g for g in gen if g not in e.pool]
        e.pool = tuple(pool)
        e.pool_w = tuple([*e.pool_w, *([0.3] * (len(pool) - len(e.pool_w)))])
    return e


def _build_family(blocks: Sequence[tuple[str, str]], *, persian: bool) -> list[NameEntry]:
    out: list[NameEntry] = []
    for block, kind in blocks:
        for native, spellings, tag in _lines(block):
            native = _fold_letters(native, persian)
            out.append(_family_entry(native, spellings, kind, persian=persian, tag=tag))
    return out


def _persian_join(base: str, suffix: str, zwnj: bool) -> str:
    non_joining = set("اآدذرزژو")
    if zwnj and base[-1] not in non_joining:
        return base + ZWNJ + suffix
    return base + suffix


def _ir_tail(given: NameList) -> list[NameEntry]:
    index = {e.native: e for e in given.entries}
    out: list[NameEntry] = []
    # interleave suffixes so that the tail is not ordered by suffix
    for bi, base in enumerate(IR_SUFFIX_BASES):
        be = index.get(base)
        if be is None:
            continue
        for si in range(len(IR_SUFFIXES)):
            suf, zw, lat = IR_SUFFIXES[(bi + si) % len(IR_SUFFIXES)]
            native = _persian_join(base, suf, zw)
            stems = be.own[:2]
            sp: list[str] = []
            for stem in stems:
                for s in lat:
                    sp.append(stem + s)
            alts = [base + " " + suf, base + suf] if ZWNJ in native else [base + " " + suf]
            e = _entry(native, _dedupe(sp), "family", persian=True, native_alts=alts)
            out.append(e)
    return out


# traditional ancestor names that Najdi family names are formed from (Al-Ibrahim, Al-Yousef,
# Al-Abdulkarim, Al-Bassam ...)
SA_TAIL_BASES = (
    "محمد",
    "أحمد",
    "علي",
    "عمر",
    "عثمان",
    "إبراهيم",
    "يوسف",
    "عيسى",
    "موسى",
    "صالح",
    "حمد",
    "سعد",
    "فهد",
    "خالد",
    "ناصر",
    "منصور",
    "راشد",
    "سلمان",
    "سليمان",
    "عبدالله",
    "عبدالعزيز",
    "عبدالرحمن",
    "عبداللطيف",
    "عبدالكريم",
    "عبدالمحسن",
    "عبدالوهاب",
    "حسين",
    "حسن",
    "مبارك",
    "جابر",
    "حمود",
    "سالم",
    "سعيد",
    "عبيد",
    "بسام",
    "قاسم",
    "مطلق",
    "سلطان",
    "تركي",
    "حمدان",
    "خليل",
    "عوض",
)


def _sa_tail(given: NameList, existing: set[str]) -> list[NameEntry]:
    """Najdi-style family names from an ancestor's name: ال + given name (Al-Mansour,
    Al-Abdulkarim)."""
    out: list[NameEntry] = []
    bases = set(SA_TAIL_BASES)
    for e in given.entries:
        if e.native not in bases:
            continue
        native = "ال" + e.native
        if native in existing:
            continue
        stems = [s for s in e.own if " " not in s and "-" not in s][:3]
        if not stems:
            continue
        out.append(_family_entry(native, stems, "family_al", persian=False))
    return out


def _plain_entries(block: str, kind: str, *, persian: bool) -> list[NameEntry]:
    return [
        _entry(_fold_letters(n, persian), sp, kind, persian=persian, cohort=t)
        for n, sp, t in _lines(block)
    ]


# --- the lists --------------------------------------------------------------------------
SA_MALE_LIST = _build_given(SA_MALE, persian=False)
SA_FEMALE_LIST = _build_given(SA_FEMALE, persian=False)
_sa_fam = _build_family(
    [(SA_FAMILY_AL, "family_al"), (SA_FAMILY_AAL, "family_aal"), (SA_FAMILY_PLAIN, "family_plain")],
    persian=False,
)
# the hand-listed tribal and family names rank first, the generated tail after them
SA_FAMILY_LIST = _zipf(_sa_fam + _sa_tail(SA_MALE_LIST, {e.native for e in _sa_fam}), s=0.95, b=4.0)
ARAB_EXPAT_FAMILY_LIST = _zipf(
    _build_family([(ARAB_EXPAT_FAMILY, "family_plain")], persian=False), s=0.8, b=1.0
)
SOUTH_ASIAN_MALE_LIST = _zipf(
    _plain_entries(SOUTH_ASIAN_MALE, "given", persian=False), s=0.9, b=1.0
)
SOUTH_ASIAN_FEMALE_LIST = _zipf(
    _plain_entries(SOUTH_ASIAN_FEMALE, "given", persian=False), s=0.8, b=1.0
)
SOUTH_ASIAN_FAMILY_LIST = _zipf(
    _plain_entries(SOUTH_ASIAN_FAMILY, "family", persian=False), s=0.9, b=1.0
)


def _latin_only(names: Sequence[str], kind: str) -> list[NameEntry]:
    return [_entry(n, [n], kind, persian=False, latin_only=True, rules=False) for n in names]


FILIPINO_MALE_LIST = _zipf(_latin_only(FILIPINO_MALE, "given"), s=0.8, b=1.0)
FILIPINO_FEMALE_LIST = _zipf(_latin_only(FILIPINO_FEMALE, "given"), s=0.8, b=1.0)
FILIPINO_FAMILY_LIST = _zipf(
    [
        _entry(n, sp, "family", persian=False, latin_only=True, rules=False)
        for n, sp, _ in _lines(FILIPINO_FAMILY)
    ],
    s=0.9,
    b=1.0,
)

IR_MALE_LIST = _build_given(IR_MALE, persian=True)
IR_FEMALE_LIST = _build_given(IR_FEMALE, persian=True)
_ir_fam = _build_family([(IR_FAMILY, "family")], persian=True)
IR_FAMILY_LIST = _zipf(_ir_fam + _ir_tail(IR_MALE_LIST), s=0.95, b=3.0)

SEYYED_FAMILIES = {e.native for e in _ir_fam if e.seyyed}


@dataclass(frozen=True)
class City:
    native: str
    latin: tuple[str, ...]
    weight: float
    area: str


def _cities(block: str) -> list[City]:
    out = []
    for raw in block.strip().splitlines():
        cols = [c.strip() for c in raw.split("|")]
        spellings = tuple(s.strip() for s in cols[1].split(","))
        out.append(City(cols[0], spellings, float(cols[2]), cols[3]))
    return out


SA_CITY_LIST = _cities(SA_CITIES)
IR_CITY_LIST = _cities(IR_CITIES)

ALL_ENTRIES: tuple[NameEntry, ...] = tuple(_REGISTRY)


def name_stats() -> dict[str, int]:
    """Sizes of the lists (for the manifest)."""
    return {
        "sa_male": len(SA_MALE_LIST.entries),
        "sa_female": len(SA_FEMALE_LIST.entries),
        "sa_family": len(SA_FAMILY_LIST.entries),
        "ir_male": len(IR_MALE_LIST.entries),
        "ir_female": len(IR_FEMALE_LIST.entries),
        "ir_family": len(IR_FAMILY_LIST.entries),
        "latin_spellings": sum(len(e.pool) for e in ALL_ENTRIES),
    }
