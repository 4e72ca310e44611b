"""Pictures and the HTML report: attention maps, match images, ranked lists, plots.

drawing (RGB uint8 primitives) <- attention, match_images, ranked_lists, plots
<- report_html (the page) <- retrieval_report (an evaluation's sections). The
layer sits above retrieval; commands (dolg-visualize, dolg-retrieve
--report_dir) call it.
"""
